"""The device sessions this process serves, by device: the one registry of local connections.

Who uses it: a session attaches itself when it opens and detaches when it closes (a long
poll's, while the poll is pending); the revocation bus closes a revoked device's sessions, and
one task per process those whose token expired (:meth:`LocalSessions.expire_tokens`);
shutdown drains them all; and one task per process stores acknowledged positions
(:meth:`LocalSessions.flush_cursors`). Delivery itself
does not go through here: a session subscribes to its user's inbox and presence through the
ports, whose adapters multiplex one subscription per user among that user's sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING

from core.close import CloseCode
from core.ports import Clock

if TYPE_CHECKING:
    from core.session import DeviceSession

log = logging.getLogger(__name__)


class LocalSessions:
    def __init__(self, cursor_flush_s: float, clock: Clock) -> None:
        self._cursor_flush_s = cursor_flush_s
        self._clock = clock
        self._by_device: dict[str, DeviceSession | set[DeviceSession]] = {}
        # (token expiry in ms, device id) of devices with sessions here, soonest first: one
        # heap and one task for the process, not a timer per socket (about 500 bytes each,
        # idle or not; an entry here is about 100). Entries of devices whose sessions all
        # went stay until they come due or the heap is compacted (see attach).
        self._expiries: list[tuple[int, str]] = []
        self._expiry_wanted = asyncio.Event()  # set when an entry comes first in the heap
        # sessions whose acked position is not stored yet, with when to store it
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
            self._expire_at(conn.device.expires_at, key)
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
            self._unflushed[conn] = asyncio.get_running_loop().time() + self._cursor_flush_s
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

    def _expire_at(self, expires_at: int, device_id: str) -> None:
        heap = self._expiries
        if len(heap) > 2 * len(self._by_device) + 64:
            # mostly devices gone from here (every poll attaches): keep those still here, once
            heap[:] = sorted({(at, d) for at, d in heap if d in self._by_device})
        heapq.heappush(heap, (expires_at, device_id))
        if heap[0][1] == device_id:
            self._expiry_wanted.set()

    def close_expired(self) -> float | None:
        """Close the sessions of every device whose token expired (4001, as a revoked one:
        the client logs in again; a pending poll answers 401), and say in how many seconds the
        next expires (None: no session here)."""
        heap, now = self._expiries, self._clock.now_ms()
        while heap and heap[0][0] <= now:
            _, device_id = heapq.heappop(heap)
            for conn in list(self._of_device(device_id)):
                conn.close_soon(CloseCode.REVOKED, "token expired; log in again")
        return (heap[0][0] - now) / 1000 if heap else None

    async def expire_tokens(self) -> None:
        """Close sessions as their tokens expire, until cancelled: the process runs this once,
        under its supervisor. A token is checked when a socket opens or a request or poll
        comes; without this, a socket opened before its token expired kept sending after
        (issue 13, finding k)."""
        while True:
            delay = self.close_expired()
            self._expiry_wanted.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # None: until a session attaches
                    await self._expiry_wanted.wait()

    def device_revoked(self, device_id: str) -> None:
        """Close this process's connections of a revoked device, and end its pending polls
        with 401 (called by the revocation bus)."""
        for conn in list(self._of_device(device_id)):
            conn.close_soon(CloseCode.REVOKED, "device logged out or revoked")

    async def drain(self) -> None:
        """Close every connection of this process so the clients reconnect elsewhere."""
        await asyncio.gather(
            *(c.close(CloseCode.GOING_AWAY, "server shutting down") for c in self.connections),
            return_exceptions=True,
        )  # each connection stores its position as it closes
