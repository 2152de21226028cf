"""Presence heartbeats in the KV bucket ``chat_presence`` (implements
core.ports.PresenceStore), and last seen in ``chat_last_seen``.

``chat_presence`` has ``ttl`` = the presence TTL and a limit-marker TTL (NATS 2.11+ subject
delete markers): when an entry ages out, the server writes a marker that every watcher
receives as a PURGE, which is how "this device went silent" is pushed, not polled.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue


class KvPresenceStore:
    def __init__(self, presence: KeyValue, last_seen: KeyValue) -> None:
        self._kv = presence
        self._last_seen = last_seen

    async def beat(self, user: str, device: str, now_ms: int) -> None:
        await self._kv.put(f"{user}.{device}", str(now_ms).encode())

    async def gone(self, user: str, device: str) -> None:
        await self._kv.purge(f"{user}.{device}")

    async def run(
        self, on_change: Callable[[str, str, int | None], None], on_ready: Callable[[], None]
    ) -> None:
        watcher = await self._kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:  # the entries that existed have all been given
                    on_ready()
                    continue
                user, _, device = entry.key.partition(".")
                if entry.operation in ("DEL", "PURGE"):
                    on_change(user, device, None)
                else:
                    on_change(user, device, int(entry.value or b"0"))
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    async def last_seen(self, users: list[str]) -> dict[str, int]:
        out = {}
        for user in users:
            try:
                entry = await self._last_seen.get(user)
            except KeyNotFoundError:
                continue
            if entry.value:
                out[user] = int(entry.value)
        return out

    async def set_last_seen(self, user: str, ms: int) -> None:
        await self._last_seen.put(user, str(ms).encode())
