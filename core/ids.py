"""Identifiers and secrets."""

from __future__ import annotations

import hashlib
import secrets
import threading

from core.ports import Clock


class MessageIds:
    """Unique, time-sortable message ids: 24 hex digits.

    ``mmmmmmmmmmmm cccc nnnnnnnn``: 48 bits of ms since the epoch, a 16-bit counter and a 32-bit
    random id of this process. Ids from one process are strictly increasing even if the clock
    steps back (the last timestamp is reused and the counter advances); ids from different
    processes differ in the process part, so they never collide and still sort by time.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._node = secrets.randbits(32)
        self._last_ms = 0
        self._counter = 0
        self._lock = threading.Lock()

    def next(self) -> tuple[str, int]:
        """A new id and the timestamp (ms) it carries."""
        with self._lock:
            now = self._clock.now_ms()
            if now > self._last_ms:
                self._last_ms, self._counter = now, 0
            else:
                self._counter += 1
                if self._counter > 0xFFFF:
                    self._last_ms, self._counter = self._last_ms + 1, 0
            return f"{self._last_ms:012x}{self._counter:04x}{self._node:08x}", self._last_ms

    def after(self, last_id: str) -> tuple[str, int]:
        """A new id greater than ``last_id`` (another process's, whose clock may be ahead):
        this is how a group's ids follow the group's sequence."""
        with self._lock:
            last = (int(last_id[:12], 16), int(last_id[12:16], 16))
            if (self._last_ms, self._counter) < last:
                self._last_ms, self._counter = last
        return self.next()


def new_device_id() -> str:
    return secrets.token_hex(8)


def new_token() -> str:
    """A bearer token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    """Tokens are stored hashed; SHA-256 is enough for 256-bit random secrets (no KDF needed)."""
    return hashlib.sha256(token.encode()).digest()
