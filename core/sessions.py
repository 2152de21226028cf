"""The device sessions this process serves, by device: the one registry of local connections.

Who uses it: a session attaches itself when it opens and detaches when it closes; the
revocation bus closes a revoked device's sessions; shutdown drains them all; and one task per
process stores acknowledged positions (:meth:`LocalSessions.flush_cursors`). Delivery itself
does not go through here: a session subscribes to its user's inbox and presence through the
ports, whose adapters multiplex one subscription per user among that user's sessions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING

from core.close import CloseCode

if TYPE_CHECKING:
    from core.session import DeviceSession

log = logging.getLogger(__name__)


class LocalSessions:
    def __init__(self, cursor_flush_s: float) -> None:
        self._cursor_flush_s = cursor_flush_s
        self._by_device: dict[str, DeviceSession | set[DeviceSession]] = {}
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

    def device_revoked(self, device_id: str) -> None:
        """Close this process's connections of a revoked device (called by the revocation bus)."""
        for conn in list(self._of_device(device_id)):
            conn.close_soon(CloseCode.REVOKED, "device logged out or revoked")

    async def drain(self) -> None:
        """Close every connection of this process so the clients reconnect elsewhere."""
        await asyncio.gather(
            *(c.close(CloseCode.GOING_AWAY, "server shutting down") for c in self.connections),
            return_exceptions=True,
        )  # each connection stores its position as it closes
