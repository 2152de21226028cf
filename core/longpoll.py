"""Long polling: the same inbox and events as a WebSocket connection, one request at a time.

A poll carries the cursor of what the client has; it also acknowledges everything up to it
(so the cursor is stored and delivered receipts go out, as a WebSocket ``ack`` does). The
answer comes at once when the inbox holds more, else when a message or an event arrives, else
after the timeout, with the frames and the cursor for the next poll. A pending poll is the
device's presence heartbeat. Any process can answer any poll: nothing of a poll outlives it.

Several polls of one device at once: a new poll ends the device's poll pending on the same
process (it answers with what it has, usually nothing); polls of one device pending on two
processes each answer the same messages from the same cursor, which the client de-duplicates
by id as always. Ephemeral events (typing, presence, receipts) reach a device only while one of
its polls is pending; clients poll again at once, so that is nearly always.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from core import metrics
from core.chat import Chat
from core.feed import InboxFeed
from core.model import Device
from core.ports import InboxEntry
from core.presence import without_last_seen
from core.protocol import (
    MsgFrame,
    MsgsFrame,
    PresenceEvent,
    ReceiptEvent,
    ResyncNeeded,
    TypingEvent,
    encode,
    msg_frames,
)
from core.receipts import decode_head, delivered_marks

PollFrame = MsgFrame | MsgsFrame | ResyncNeeded | ReceiptEvent | TypingEvent | PresenceEvent
"""The server frames a poll answers with (``msgs`` only for protocol 2)."""

_VISIBLE_CACHE_S = 30.0
"""Whose presence a user may see is cached this long per process (a poll per 25 s per device
would otherwise cost a Postgres query each)."""
_VISIBLE_CACHE_USERS = 100_000
_ACK_READ_BATCHES = 4
"""Batches of the acknowledged range read back to send delivered receipts; a device that
acknowledges more at once (a long catch-up) gets them for the newest part only."""


class LongPoll:
    def __init__(self, chat: Chat) -> None:
        self._chat = chat
        # per device, the pending poll's "answer now" future (see _wait)
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._visible: dict[str, tuple[float, set[str], bool]] = {}

    async def poll(
        self,
        device: Device,
        cursor: int | None,
        timeout: float,
        gone: asyncio.Future[None] | None = None,
        protocol: int = 1,
    ) -> tuple[int, list[str]]:
        """Frames for the client and the cursor for its next poll; messages in ``msgs``
        frames if the client speaks ``protocol`` 2. ``gone``: resolved by the frontend when
        the client went away, which ends the poll at once (else it would hold its
        subscription until the timeout)."""
        chat, user = self._chat, device.user_id
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        previous = self._pending.get(device.id)
        if previous is not None:
            _resolve(previous)
        self._pending[device.id] = answer
        if gone is not None:
            gone.add_done_callback(lambda _: _resolve(answer))
        try:
            await chat.presence.beat(user, device.id)
            cursor = await self._acknowledge(device, cursor)
            first, last = await chat.inbox.bounds()
            if cursor > last or 0 < cursor < first - 1:
                return cursor, [encode(ResyncNeeded(cursor, first, last))]
            return await self._wait(device, cursor, timeout, answer, protocol)
        finally:
            if self._pending.get(device.id) is answer:
                del self._pending[device.id]

    async def _wait(
        self,
        device: Device,
        cursor: int,
        timeout: float,
        answer: asyncio.Future[None],
        protocol: int,
    ) -> tuple[int, list[str]]:
        """``answer`` is resolved by whatever should end the wait: a live entry, an event, a
        newer poll of the device, the client leaving. One future rather than events and
        tasks waiting on them: a pending poll is mostly idle, and there are many."""
        chat, user, limits = self._chat, device.user_id, self._chat.limits
        feed = InboxFeed(cursor, limits.live_buffer)
        frames: list[str] = []

        def on_entry(entry: InboxEntry) -> None:
            feed.on_live(entry)
            _resolve(answer)

        def on_event(event: bytes) -> None:
            frames.append(event.decode())
            _resolve(answer)

        visible, hides_own = await self._visibility(user)

        def on_presence(event: PresenceEvent) -> None:
            frames.append(encode(without_last_seen(event) if hides_own else event))
            _resolve(answer)

        unwatch = await chat.inbox.watch(user, on_entry, on_event)
        unwatch_presence = chat.presence.watch(visible, on_presence)
        metrics.PENDING_POLLS.inc()
        try:
            entries = feed.on_read(await self._read(user, cursor))
            if not entries:
                if not answer.done():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await answer  # cancelled by the timeout: nobody else awaits it
                live, need_read = feed.take_live()
                entries = live
                if need_read:  # a gap, or dropped live entries: the inbox has them in order
                    entries += feed.on_read(await self._read(user, feed.position))
        finally:
            metrics.PENDING_POLLS.dec()
            unwatch_presence()
            await unwatch()
        messages = msg_frames(entries, protocol, limits.msgs_frame_bytes)
        return feed.position, [*messages, *frames]

    async def _acknowledge(self, device: Device, cursor: int | None) -> int:
        """The poll's cursor acknowledges everything up to it: store it, send receipts."""
        chat, user = self._chat, device.user_id
        stored = await chat.cursors.get(user, device.id)
        if cursor is None:
            return stored or 0
        if stored is not None and cursor <= stored:
            return cursor
        await chat.cursors.put(user, device.id, cursor)
        after = stored or 0
        acked: list[InboxEntry] = []
        for _ in range(_ACK_READ_BATCHES):
            batch = await self._read(user, after)
            acked += [e for e in batch if e.seq <= cursor]
            if not batch or batch[-1].seq >= cursor:
                break
            after = batch[-1].seq
        heads = [decode_head(e.data) for e in acked]
        await chat.receipts.delivered(user, delivered_marks(user, heads))
        return cursor

    async def _read(self, user: str, after: int) -> list[InboxEntry]:
        limits = self._chat.limits
        page = await self._chat.inbox.read_page(
            user, after, limits.replay_batch, limits.replay_bytes
        )
        return page.entries

    async def _visibility(self, user: str) -> tuple[set[str], bool]:
        cached = self._visible.get(user)
        if cached is None or cached[0] < time.monotonic():
            if len(self._visible) >= _VISIBLE_CACHE_USERS:
                self._visible.clear()  # cheaper than tracking age: entries are 30 s anyway
            social = self._chat.social
            visible = await social.visible(user)
            hides_own = bool(await social.hidden([user]))
            cached = (time.monotonic() + _VISIBLE_CACHE_S, visible, hides_own)
            self._visible[user] = cached
        return cached[1], cached[2]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
