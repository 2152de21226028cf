"""The core as the frontends see it: one object holding the use cases and the limits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING

import msgspec

from core.accounts import Accounts
from core.close import CloseCode
from core.events import Events
from core.groups import Groups
from core.history import History
from core.messaging import Messaging
from core.ports import Clock, CursorStore, InboxLog, SocialStore
from core.presence import Presence
from core.receipts import Receipts

if TYPE_CHECKING:
    from core.session import DeviceSession

log = logging.getLogger(__name__)


class Limits(msgspec.Struct, frozen=True):
    """Per-connection limits. Defaults are the production values; tests shrink them."""

    max_message_chars: int = 100_000
    """Longest text accepted, in Unicode code points (Python ``len``)."""
    replay_batch: int = 4096
    """Inbox entries fetched per read while catching up (and at most per long-poll answer).
    Besides its messages, a read costs JetStream a fixed part: about 0.5 ms with 20,000
    messages in the stream on 2 cores, more in a larger stream. A 10,000-message catch-up
    takes 40 reads of 256, or 5 growing up to 4096 (the first reads are smaller, see
    core/session.py)."""
    replay_bytes: int = 1 << 20
    """Bytes of stored messages fetched per read at most, whatever ``replay_batch`` says
    (1 MiB): with the read ahead, a replaying connection holds at most twice this, however
    long its messages."""
    msgs_frame_bytes: int = 64 << 10
    """Longest ``msgs`` frame (64 KiB): a couple of hundred short messages, so the cost per
    frame is spread thin while a frame stays far below the 1 MiB a client accepts by
    default. A message too long to share a frame goes alone, in a ``msg`` frame."""
    live_buffer: int = 1024
    """Live entries held per connection while it is replaying or slow; beyond that they are
    dropped and read back from the inbox, so memory stays bounded."""
    outbox_bytes: int = 1 << 20
    """Bytes of frames queued for one client before the producers wait (1 MiB)."""
    send_timeout_s: float = 10.0
    """A client that does not take a frame for this long is closed as a slow consumer."""
    close_timeout_s: float = 10.0
    """How long a closing frame may wait behind frames the client has not read; after that the
    connection is dropped without one."""
    max_inflight_sends: int = 256
    """Send frames queued per connection before the server stops reading from it."""
    cursor_flush_s: float = 1.0
    """How often a device's acked position is written to the cursor store (and on close)."""
    typing_per_s: float = 1.0
    """Typing events a device may send per second on average (beyond: dropped)."""
    typing_burst: int = 5


class Chat:
    def __init__(
        self,
        accounts: Accounts,
        messaging: Messaging,
        history: History,
        inbox: InboxLog,
        cursors: CursorStore,
        limits: Limits,
        groups: Groups,
        events: Events,
        clock: Clock,
        receipts: Receipts,
        presence: Presence,
        social: SocialStore,
    ) -> None:
        self.accounts = accounts
        self.messaging = messaging
        self.history = history
        self.groups = groups
        self.events = events
        self.receipts = receipts
        self.presence = presence
        self.social = social
        self.clock = clock
        self.inbox = inbox
        self.cursors = cursors
        self.limits = limits
        self._by_device: dict[str, DeviceSession | set[DeviceSession]] = {}
        # connections whose acked position is not stored yet, with when to store it
        self._unflushed: dict[DeviceSession, float] = {}
        self._flush_wanted = asyncio.Event()  # set when _unflushed gets a first entry

    @property
    def connections(self) -> list[DeviceSession]:
        return [c for device in self._by_device for c in self._of_device(device)]

    def _of_device(self, device_id: str) -> Collection[DeviceSession]:
        conns = self._by_device.get(device_id)
        if conns is None:
            return ()
        return conns if isinstance(conns, set) else (conns,)

    def attach(self, conn: DeviceSession) -> None:
        key = conn.device.id
        current = self._by_device.get(key)
        if current is None:
            self._by_device[key] = conn  # one per device, nearly always: no set (~200 bytes)
        elif isinstance(current, set):
            current.add(conn)
        elif current is not conn:
            self._by_device[key] = {current, conn}

    def detach(self, conn: DeviceSession) -> None:
        self._unflushed.pop(conn, None)  # the connection flushes itself as it closes
        key = conn.device.id
        current = self._by_device.get(key)
        if current is conn:
            del self._by_device[key]
        elif isinstance(current, set):
            current.discard(conn)
            if len(current) == 1:
                self._by_device[key] = next(iter(current))

    def acked(self, conn: DeviceSession) -> None:
        """An attached connection's client acknowledged more: its position is stored
        ``limits.cursor_flush_s`` after the first ack not yet stored, by :meth:`flush_cursors`."""
        if conn not in self._unflushed:
            # the delay is the same for all: insertion order is the order of the deadlines
            self._unflushed[conn] = asyncio.get_running_loop().time() + self.limits.cursor_flush_s
            self._flush_wanted.set()

    async def flush_cursors(self) -> None:
        """Store acknowledged positions as they come due, until cancelled: the process runs
        this once, under its supervisor (a task per connection would cost about a kilobyte
        each, idle or not). Each is written at its own time, not all at once, so the writes do
        not come as one burst that stalls delivery every period. It waits on an event while
        nothing is due: one idle task per process. (It used to be started at the first ack of
        each burst and end when none was left; that saved nothing worth having, and its
        failures were never retrieved.) Connections that close store their own position."""
        loop = asyncio.get_running_loop()
        unflushed = self._unflushed
        while True:
            if not unflushed:
                self._flush_wanted.clear()
                await self._flush_wanted.wait()
                continue
            delay = next(iter(unflushed.values())) - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            due = []
            while unflushed and next(iter(unflushed.values())) <= now:
                conn = next(iter(unflushed))
                del unflushed[conn]
                due.append(conn)
            results = await asyncio.gather(*(c.flush_cursor() for c in due), return_exceptions=True)
            for conn, result in zip(due, results, strict=True):
                if isinstance(result, Exception):
                    # the client replays a little more after a reconnect, nothing is lost
                    log.warning("storing a cursor failed; retrying", exc_info=result)
                    if conn in self._of_device(conn.device.id):
                        self.acked(conn)

    def device_revoked(self, device_id: str) -> None:
        """Close this process's connections of a revoked device (called by the revocation bus)."""
        for conn in list(self._of_device(device_id)):
            conn.close_soon(CloseCode.REVOKED, "device logged out or revoked")

    async def revoke(self, user: str, device: str) -> None:
        """Log a device out: its token stops working everywhere, its open connections close,
        and it goes offline at once (not after the presence TTL)."""
        await self.accounts.revoke(user, device)
        await self.presence.gone(user, device)

    async def drain(self) -> None:
        """Close every connection of this process so the clients reconnect elsewhere."""
        await asyncio.gather(
            *(c.close(CloseCode.GOING_AWAY, "server shutting down") for c in self.connections),
            return_exceptions=True,
        )  # each connection stores its position as it closes
