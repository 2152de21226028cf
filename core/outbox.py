"""What a device's frames wait in, and how its driver waits, allocating nothing while idle.

Both exist because memory per idle device bounds how many one process holds (tens of
thousands of sockets, more pending polls): an ``asyncio.Queue`` or ``asyncio.Event`` holds a
deque (about 800 bytes) from birth, these only while something waits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class Outbox:
    """Frames waiting for the writer, bounded in bytes: producers wait while it is full
    (:meth:`put`), or drop what can be lost (:meth:`offer`). ``on_frame`` is called after each
    frame queued (it starts the writer). Nothing is allocated while it is empty."""

    __slots__ = ("_bytes", "_frames", "_max", "_on_frame", "_space")

    def __init__(self, max_bytes: int, on_frame: Callable[[], None]) -> None:
        self._frames: deque[str] | None = None
        self._bytes = 0
        self._max = max_bytes
        self._on_frame = on_frame
        self._space: asyncio.Event | None = None  # only while a producer waits for room

    async def put(self, frame: str) -> None:
        # One frame larger than the bound is still let through on an empty outbox.
        while self._bytes >= self._max:
            if self._space is None:
                self._space = asyncio.Event()
            await self._space.wait()
        self._append(frame)

    def offer(self, frame: str) -> bool:
        """Queue a frame if there is room, else drop it (ephemeral events: a slow client
        misses a typing indicator rather than holding anything up)."""
        if self._bytes >= self._max:
            return False
        self._append(frame)
        return True

    def _append(self, frame: str) -> None:
        if self._frames is None:
            self._frames = deque()
        self._frames.append(frame)
        self._bytes += len(frame)
        self._on_frame()

    def take(self) -> str | None:
        """The oldest frame, or None when empty."""
        frames = self._frames
        if not frames:
            self._frames = None
            return None
        frame = frames.popleft()
        self._bytes -= len(frame)
        if self._space is not None and self._bytes < self._max:
            self._space.set()
            self._space = None
        return frame


class Wake:
    """``asyncio.Event``'s set, clear and wait for a single waiter, allocating nothing while
    nobody waits (an Event holds a deque: about 800 bytes on every idle connection)."""

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._flag = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    async def wait(self) -> None:
        if self._flag:
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None
