"""One device's delivery, whatever the transport: the device session.

A device receives its inbox after a cursor (replay, then live, with no gap or repeat: the
sans-I/O :class:`core.feed.InboxFeed` decides), acknowledges what it processed (stored as its
cursor, and turned into delivered receipts from what the session tracked as sent), is told of
events (typing, receipts, presence of those it may see), beats presence, and makes requests
(:mod:`core.requests`, one table shared with HTTP). Every rule of that lives here, once:

- :class:`DeviceSession` over a WebSocket (frontends/ws): ``hello`` starts :meth:`_feed_loop`,
  which replays then delivers live until the socket goes; ``ack`` frames are flushed as cursor
  and receipts every ``cursor_flush_s`` by one task of the process (:class:`core.chat.Chat`).
- :class:`DeviceSession` for one long poll (frontends/longpoll, through :class:`LongPolls`):
  :meth:`DeviceSession.poll` acknowledges the poll's cursor, reads once, waits for something
  to say, answers, and ends. Nothing of it outlives the poll but a small per-process cache of
  what it sent (see :class:`LongPolls`), which only saves a read.

Both write through one :class:`core.ports.Transport`: frames wait in a bounded
:class:`core.outbox.Outbox` for one writer task that runs only while there are frames, and a
client that takes none for ``send_timeout_s`` is closed as a slow consumer (4008). For a poll
the transport only collects the answer's frames, so the writer never waits there.

Tasks: the writer, the sender (batches this device's sends, in order) and, after ``hello``, the
feed. The writer and the sender run only while they have work, so an idle WebSocket holds no
task of its own but the feed, and a pending poll none at all. Why: memory per idle device is
what bounds how many one process holds (tens of thousands), and every task, queue or event
costs about a kilobyte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NamedTuple

from core import metrics
from core.close import CloseCode
from core.errors import ChatError, ErrorCode
from core.feed import InboxFeed
from core.messaging import SendRequest
from core.model import Device, Sent
from core.outbox import Outbox, Wake
from core.ports import InboxEntry, InboxLog, Transport
from core.presence import without_last_seen
from core.protocol import (
    PROTOCOL_VERSION,
    Ack,
    CaughtUp,
    ClientFrame,
    Hello,
    Ping,
    Pong,
    PresenceEvent,
    ResyncNeeded,
    Send,
    SentFrame,
    Welcome,
    decode_client_frame,
    encode,
    error_frame,
    msg_frames,
)
from core.receipts import Head, decode_head, delivered_marks
from core.requests import HANDLERS, Handler

if TYPE_CHECKING:
    from core.chat import Chat

log = logging.getLogger(__name__)

SEND_BATCH = 64  # sends taken from the queue per write to JetStream

_MAX_READ_BACKOFF_S = 0.5
_FIRST_REPLAY_PAGE = 256
"""Entries of a replay's first read; each next read is 4 times larger, up to replay_batch.
JetStream takes about 8 us per message of a batched direct get (nats-server 2.15, 2 cores),
so a first read of 4096 would hold the first frame back by some 30 ms."""
_TRACKED_DELIVERIES = 20_000
_ACK_READ_PAGES = 4
"""Pages of an acknowledged range read back for delivered receipts when this process did not
send it (see :meth:`DeviceSession._track_range`)."""

Tracked = deque[tuple[int, Head]]
"""(seq, head) of messages sent to a device and not acknowledged yet, oldest first."""


# --- the rules both transports apply ------------------------------------------------------


def check_cursor(cursor: int | None) -> None:
    """A cursor is a position in the inbox: never negative (``invalid_argument``)."""
    if cursor is not None and cursor < 0:
        raise ChatError(ErrorCode.INVALID_ARGUMENT, "cursor must be >= 0")


def negotiate(protocol: int) -> int:
    """The version spoken with a client that says it speaks ``protocol``: ours if it is
    newer; below 1 is ``invalid_argument``."""
    if protocol < 1:
        raise ChatError(ErrorCode.INVALID_ARGUMENT, "protocol must be >= 1")
    return min(protocol, PROTOCOL_VERSION)


async def resync_needed(inbox: InboxLog, cursor: int) -> ResyncNeeded | None:
    """The inbox no longer holds everything after ``cursor`` (retention removed some), or
    the cursor is beyond its end: never skip silently, tell the client to resync."""
    first, last = await inbox.bounds()
    if cursor > last or 0 < cursor < first - 1:
        return ResyncNeeded(cursor, first, last)
    return None


class DeviceSession:
    """One device's delivery over one transport: a WebSocket's life, or one long poll."""

    __slots__ = (
        "_acked",
        "_attached",
        "_chat",
        "_closed",
        "_closer",
        "_delivered",
        "_feed_task",
        "_flushed",
        "_lease",
        "_limits",
        "_outbox",
        "_poll_wake",
        "_protocol",
        "_reads",
        "_refused",
        "_sender",
        "_sends",
        "_sends_space",
        "_transport",
        "_unwatch_presence",
        "_writer",
        "device",
    )

    def __init__(self, chat: Chat, device: Device, transport: Transport) -> None:
        self._chat = chat
        self._limits = chat.limits
        self.device = device
        self._transport = transport
        self._outbox = Outbox(self._limits.outbox_bytes, self._queued)
        self._writer: asyncio.Task[None] | None = None
        # sends waiting for the sender, in order; None while there are none
        self._sends: deque[Send] | None = None
        self._sends_space: asyncio.Event | None = None  # while receive() waits for room
        self._sender: asyncio.Task[None] | None = None
        self._reads: set[asyncio.Task[None]] | None = None  # answering history reads etc.
        self._feed_task: asyncio.Task[None] | None = None
        self._acked = -1
        self._flushed = -1
        self._closed = False
        self._closer: asyncio.Future[bool] | None = None
        self._unwatch_presence: Callable[[], None] | None = None
        # Messages sent and not yet acknowledged; bounded: beyond it the oldest go without a
        # delivered receipt (the read receipt still comes). Created with the first message.
        self._delivered: Tracked | None = None
        self._attached = False
        self._protocol = 1  # the version the client speaks, from its hello or poll
        self._poll_wake: Wake | None = None  # while a poll waits: set when it should answer
        self._lease: str | None = None  # counted among its user's connections (admit)
        self._refused: str | None = None  # why a pending poll answers 401 (revoked, expired)

    @property
    def user(self) -> str:
        return self.device.user_id

    # --- a WebSocket's life ---------------------------------------------------------------

    async def admit(self) -> None:
        """Before the socket is accepted: count it among the user's open connections, shared
        by every process (``rate_limited`` beyond the limit; the frontend refuses the upgrade).
        :meth:`aclose` stops counting it; its ``ping`` frames renew the count's lease."""
        limits = self._chat.rate_limits
        if limits is not None:
            lease = f"{self.device.id}:{secrets.token_hex(6)}"
            await limits.connect(self.user, lease)
            self._lease = lease

    async def open(self) -> None:
        """The socket is accepted: registered for revocation, drain and cursor flushes,
        online, watching presence, welcomed."""
        self._chat.sessions.attach(self)
        self._attached = True
        await self._chat.presence.beat(self.user, self.device.id)
        await self._watch_presence()
        metrics.CONNECTIONS.labels(self._transport.kind).inc()
        await self._outbox.put(
            encode(
                Welcome(
                    user=self.user,
                    device=self.device.id,
                    protocol=PROTOCOL_VERSION,
                    max_message_chars=self._limits.max_message_chars,
                )
            )
        )

    async def receive(self, data: str | bytes) -> None:
        """Handle one frame from the client. Bad frames get an error frame; the connection
        stays open. Waits (so the frontend stops reading) while too many sends are queued."""
        if self._closed:
            return  # closing (a revoked device, an expired token): nothing more is taken
        if isinstance(data, bytes):
            await self._reply_error(
                ChatError(ErrorCode.NOT_TEXT, "binary frames are not supported; send JSON text")
            )
            return
        try:
            frame = decode_client_frame(data)
        except ChatError as err:
            await self._reply_error(err)
            return
        try:
            await self._dispatch(frame)
        except Exception:
            # A bug (or a backend error nothing turned into a ChatError) while handling this
            # frame: it fails alone, as an HTTP request would (500 with a request id), and the
            # connection goes on; closing it (1011, as it used to) made the client reconnect
            # and often send the same frame again.
            error_id = secrets.token_hex(8)
            log.exception(
                "handling a frame failed",
                extra={
                    "error_id": error_id,
                    "device": self.device.id,
                    "frame": type(frame).__name__,
                },
            )
            ref = frame.client_id if isinstance(frame, Send) else Handler.ref(frame)
            await self._reply_error(
                ChatError(ErrorCode.INTERNAL, f"internal error (error id {error_id})"), ref
            )

    async def _dispatch(self, frame: ClientFrame) -> None:
        if isinstance(frame, Send):
            await self._queue_send(frame)
        elif isinstance(frame, Ack):
            if frame.seq < 0:
                await self._reply_error(ChatError(ErrorCode.INVALID_ARGUMENT, "seq must be >= 0"))
                return
            if frame.seq > self._acked:
                self._acked = frame.seq
                if self._attached:
                    self._chat.sessions.acked(self)
        elif isinstance(frame, Hello):
            if self._feed_task is not None and not self._feed_task.done():
                await self._reply_error(
                    ChatError(ErrorCode.INVALID_ARGUMENT, "hello was already received")
                )
                return
            try:
                check_cursor(frame.cursor)
                self._protocol = negotiate(frame.protocol)
            except ChatError as err:
                await self._reply_error(err)
                return
            self._feed_task = self._spawn(self._feed_loop(frame.cursor))
        elif isinstance(frame, Ping):
            await self._chat.presence.beat(self.user, self.device.id)  # the heartbeat
            if self._lease is not None and self._chat.rate_limits is not None:
                await self._chat.rate_limits.renew(self.user, self._lease)
            await self._outbox.put(encode(Pong()))
        else:
            handler = HANDLERS[type(frame)]
            if handler.beside:
                # Reads run beside the frame loop (they wait on the store); answers carry ref.
                if self._reads is None:
                    self._reads = set()
                self._reads.add(self._spawn(self._answer(handler, frame)))
            else:
                await self._answer(handler, frame)

    async def close(self, code: CloseCode, reason: str) -> bool:
        """Close from the server side (shutdown, slow consumer, revoked device, expired
        token). False when the close frame could not be written within ``close_timeout_s``
        (it waits behind frames the client does not read) and the connection was cut
        (aborted) instead, or the connection went meanwhile; True otherwise. A pending poll
        has nothing to close: it answers now, with what it has, or 401 ``unauthorized`` when
        its device was revoked or its token expired."""
        if self._poll_wake is not None:
            if code is CloseCode.REVOKED:
                self._refused = reason
            self._poll_wake.set()
            return True
        if self._closed:
            return True
        self._closed = True
        try:
            async with asyncio.timeout(self._limits.close_timeout_s):
                await self._transport.close(code, reason)
        except TimeoutError:
            self._transport.abort()  # the close frame is stuck behind unread data
            return False
        except Exception:  # already gone: nothing left to close
            return False
        return True

    def close_soon(self, code: CloseCode, reason: str) -> None:
        """:meth:`close` from synchronous code (a NATS callback)."""
        self._closer = asyncio.ensure_future(self.close(code, reason))

    async def aclose(self) -> None:
        """The peer is gone (or the poll answered): stop the tasks, save the acked position."""
        if self._unwatch_presence is not None:
            self._unwatch_presence()
            self._unwatch_presence = None
        if self._attached:
            self._attached = False
            self._chat.sessions.detach(self)
            metrics.CONNECTIONS.labels(self._transport.kind).dec()
        elif self._poll_wake is not None:
            self._chat.sessions.detach(self)
        self._closed = True
        tasks = [t for t in (self._writer, self._sender, self._feed_task) if t is not None]
        tasks += self._reads or ()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.flush_cursor()
        lease, self._lease = self._lease, None
        if lease is not None and self._chat.rate_limits is not None:
            await self._chat.rate_limits.disconnect(self.user, lease)

    # --- one long poll --------------------------------------------------------------------

    async def poll(
        self, cursor: int | None, timeout: float, protocol: int, sent: Unacked | None = None
    ) -> int:
        """Answer one long poll: the frames go to the transport, the cursor for the next poll
        is returned. ``cursor`` acknowledges everything up to it (stored, delivered receipts
        sent: from ``sent``, what this process's previous poll of the device sent, when it
        covers the range, else read back). Then the inbox after it: at once if it holds
        messages, else whatever comes first of a message, an event, :meth:`end`, or the
        ``timeout``. The pending poll is the device's presence heartbeat."""
        wake = self._poll_wake = Wake()
        # in the registry while pending (detached by aclose): a revocation or the token's
        # expiry ends the poll with 401, a shutdown with what it has (see close)
        self._chat.sessions.attach(self)
        check_cursor(cursor)
        self._protocol = negotiate(protocol)
        chat, user = self._chat, self.user
        await chat.presence.beat(user, self.device.id)
        stored = await chat.cursors.get(user, self.device.id)
        if cursor is None:
            cursor = stored or 0
        elif stored is None or cursor > stored:
            after = stored or 0
            if sent is not None and sent.start <= after and cursor <= sent.end:
                self._delivered = sent.heads  # what this process sent covers the range
            elif cursor > after:
                await self._track_range(after, cursor)
            self._flushed = -1 if stored is None else stored
            self._acked = cursor
            await self.flush_cursor()
        self._delivered = None  # acknowledged, or before the cursor: delivered again if so
        self._acked = self._flushed = cursor
        if (resync := await resync_needed(chat.inbox, cursor)) is not None:
            await self._outbox.put(encode(resync))
            await self._drained()
            return cursor

        feed = InboxFeed(cursor, self._limits.live_buffer)

        def on_live(entry: InboxEntry) -> None:
            feed.on_live(entry)
            wake.set()

        # events are queued in the outbox, which sets ``wake`` (see _queued)
        unwatch = await chat.inbox.watch(user, on_live, self._on_event)
        metrics.PENDING_POLLS.inc()
        try:
            await self._watch_presence()
            entries = feed.on_read(await self._read_page(feed.position))
            if not entries:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await wake.wait()
                entries, need_read = feed.take_live()
                if need_read:  # a gap, or dropped live entries: the inbox has them in order
                    entries += feed.on_read(await self._read_page(feed.position))
            if self._refused is not None:
                raise ChatError(ErrorCode.UNAUTHORIZED, self._refused)
            await self._deliver(entries)
        finally:
            metrics.PENDING_POLLS.dec()
            if self._unwatch_presence is not None:
                self._unwatch_presence()
                self._unwatch_presence = None
            await unwatch()
        await self._drained()
        return feed.position

    def end(self) -> None:
        """End a pending poll now: it answers with what it has (a newer poll of the same
        device came, or its client left)."""
        if self._poll_wake is not None:
            self._poll_wake.set()

    def unacked(self, end: int, expires_ms: int) -> Unacked:
        """What this poll sent (after its cursor, up to ``end``, the cursor it answered
        with), for the next poll to acknowledge."""
        return Unacked(expires_ms, self._acked, end, self._delivered)

    async def _drained(self) -> None:
        """Wait until the writer has handed every queued frame to the transport."""
        while (writer := self._writer) is not None:
            await writer

    # --- acknowledgements -----------------------------------------------------------------

    async def flush_cursor(self) -> None:
        """Store the acknowledged position and send the delivered receipts it implies (called
        every ``cursor_flush_s`` by :class:`core.chat.Chat` after an ack, on close, and by a
        poll for its cursor)."""
        acked = self._acked
        if acked > self._flushed:
            await self._chat.cursors.put(self.user, self.device.id, acked)
            self._flushed = acked
            await self._chat.receipts.delivered(self.user, self._take_delivered(acked))

    def _track(self, entry: InboxEntry) -> None:
        """Remember what was sent to the client, to turn its acks into delivered receipts."""
        head = decode_head(entry.data)
        if head.sender != self.user and head.conv:
            if self._delivered is None:
                self._delivered = deque(maxlen=_TRACKED_DELIVERIES)
            self._delivered.append((entry.seq, head))

    def _take_delivered(self, acked: int) -> dict[str, tuple[str, set[str]]]:
        heads = []
        delivered = self._delivered
        while delivered and delivered[0][0] <= acked:
            heads.append(delivered.popleft()[1])
        if not delivered:
            self._delivered = None
        return delivered_marks(self.user, heads)

    async def _track_range(self, after: int, upto: int) -> None:
        """Track the inbox in ``(after, upto]`` as if this session had sent it: a poll's
        acknowledged range that this process did not send (the previous poll was answered by
        another process, or too long ago to be in :class:`LongPolls`' cache). Bounded to
        ``_ACK_READ_PAGES`` pages: a device acknowledging more at once (a long catch-up)
        gets receipts for the first part only; its read receipts still come."""
        for _ in range(_ACK_READ_PAGES):
            page = await self._read_page(after)
            for entry in page:
                if entry.seq <= upto:
                    self._track(entry)
            if not page or page[-1].seq >= upto:
                return
            after = page[-1].seq

    # --- tasks ----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        # Tasks of one session, not supervised: they end with it, and a failure closes it
        # (CloseCode.INTERNAL_ERROR) so that the client reconnects and resumes from its cursor.
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self._reads is not None:
            self._reads.discard(task)
            if not self._reads:
                self._reads = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("connection task failed", exc_info=exc)
            self.close_soon(CloseCode.INTERNAL_ERROR, "internal error")

    def _queued(self) -> None:
        """A frame was queued: start the writer; a pending poll answers now."""
        if self._writer is None and not self._closed:
            self._writer = self._spawn(self._write_loop())
        if self._poll_wake is not None:
            self._poll_wake.set()

    async def _write_loop(self) -> None:
        """Write queued frames until none is left (then the task ends: a later frame starts
        another, see :meth:`_queued`)."""
        timeout = self._limits.send_timeout_s
        try:
            while (frame := self._outbox.take()) is not None:
                try:
                    await asyncio.wait_for(self._transport.send(frame), timeout)
                except TimeoutError:
                    closed = await self.close(
                        CloseCode.SLOW_CONSUMER, "slow consumer: reconnect with your cursor"
                    )
                    outcome = "closed" if closed else "cut"
                    log.info(f"slow consumer {outcome}", extra={"device": self.device.id})
                    metrics.SLOW_CONSUMERS.labels(outcome).inc()
                    return
        finally:
            self._writer = None

    async def _queue_send(self, frame: Send) -> None:
        """Queue a send for the sender, in order; wait while too many are queued (the frontend
        stops reading meanwhile)."""
        while self._sends is not None and len(self._sends) >= self._limits.max_inflight_sends:
            if self._sends_space is None:
                self._sends_space = asyncio.Event()
            await self._sends_space.wait()
        if self._sends is None:
            self._sends = deque()
        self._sends.append(frame)
        if self._sender is None:
            self._sender = self._spawn(self._send_loop())

    async def _send_loop(self) -> None:
        """Take the queued sends in batches, in order, until none is left (the same
        :meth:`core.messaging.Messaging.send_many` as :func:`core.requests.send`)."""
        messaging = self._chat.messaging
        try:
            while (sends := self._sends) and not self._closed:
                batch = [sends.popleft() for _ in range(min(SEND_BATCH, len(sends)))]
                if not sends:
                    self._sends = None
                if self._sends_space is not None:
                    self._sends_space.set()
                    self._sends_space = None
                requests = [SendRequest(f.client_id, f.to, f.text) for f in batch]
                results = await messaging.send_many(self.user, self.device.id, requests)
                for req, result in zip(requests, results, strict=True):
                    if isinstance(result, Sent):
                        await self._outbox.put(
                            encode(SentFrame(result.client_id, result.id, result.conv, result.ts))
                        )
                    else:
                        await self._outbox.put(error_frame(result, ref=req.client_id))
        finally:
            self._sender = None

    # --- delivery -------------------------------------------------------------------------

    async def _read_page(self, after: int) -> list[InboxEntry]:
        limits = self._limits
        page = await self._chat.inbox.read_page(
            self.user, after, limits.replay_batch, limits.replay_bytes
        )
        return page.entries

    async def _deliver(self, entries: list[InboxEntry]) -> None:
        """Queue ``entries`` for the client, in order: several per frame for protocol 2."""
        if not entries:
            return
        for entry in entries:
            self._track(entry)
        frames = msg_frames(entries, self._protocol, self._limits.msgs_frame_bytes)
        for frame in frames:
            await self._outbox.put(frame)
        metrics.DELIVERED.inc(len(entries))

    def _on_event(self, event: bytes) -> None:
        """An ephemeral event (typing, receipt): dropped rather than waited for."""
        if not self._outbox.offer(event.decode()):
            metrics.EVENTS_DROPPED.labels("slow_client").inc()

    async def _replay(self, feed: InboxFeed) -> None:
        """Deliver the inbox after ``feed.position`` up to where it ended at the last read.

        The next page is requested before the current one is delivered, so NATS reads while
        the client takes frames; at most two pages (``replay_batch`` entries and
        ``replay_bytes`` each) are held at once. Pages start small and grow, so the first
        messages go out while the larger pages behind them are read."""
        inbox, limits, user = self._chat.inbox, self._limits, self.user
        size = min(_FIRST_REPLAY_PAGE, limits.replay_batch)
        page = await inbox.read_page(user, feed.position, size, limits.replay_bytes)
        while True:
            entries = feed.on_read(page.entries)
            ahead = None
            if page.more and entries:
                size = min(size * 4, limits.replay_batch)
                ahead = asyncio.ensure_future(
                    inbox.read_page(user, feed.position, size, limits.replay_bytes)
                )
            try:
                await self._deliver(entries)
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                raise
            if ahead is None:
                return
            page = await ahead

    async def _feed_loop(self, cursor: int | None) -> None:
        """A WebSocket's delivery after ``hello``: replay, ``caught_up``, then live."""
        inbox = self._chat.inbox
        if cursor is None:
            cursor = await self._chat.cursors.get(self.user, self.device.id) or 0
        if (resync := await resync_needed(inbox, cursor)) is not None:
            await self._outbox.put(encode(resync))
            return

        feed = InboxFeed(cursor, self._limits.live_buffer)
        wake = Wake()

        def on_live(entry: InboxEntry) -> None:
            feed.on_live(entry)
            wake.set()

        unwatch = await inbox.watch(self.user, on_live, self._on_event)
        try:
            need_read, caught_up, backoff = True, False, 0.0
            while True:
                before = feed.position
                if need_read:
                    await self._replay(feed)
                live, need_read = feed.take_live()
                if live:
                    await self._deliver(live)
                if need_read:
                    # A live entry names a predecessor that the read did not return yet (a
                    # replica lagging behind the leader): wait a little and read again, never
                    # skip it.
                    if feed.position == before:
                        backoff = min(_MAX_READ_BACKOFF_S, backoff * 2 or 0.005)
                        await asyncio.sleep(backoff)
                    continue
                backoff = 0.0
                if not caught_up:
                    caught_up = True
                    await self._outbox.put(encode(CaughtUp(feed.position)))
                wake.clear()
                if not feed.has_live:
                    await wake.wait()
        finally:
            await unwatch()

    async def _watch_presence(self) -> None:
        """From now on, told of presence changes of everyone this user may see."""
        visible, hides_own = await self._chat.presence.visibility(self.user)

        def deliver(event: PresenceEvent) -> None:
            frame = encode(without_last_seen(event) if hides_own else event)
            if not self._outbox.offer(frame):
                metrics.EVENTS_DROPPED.labels("slow_client").inc()

        self._unwatch_presence = self._chat.presence.watch(visible, deliver)

    # --- requests -------------------------------------------------------------------------

    async def _answer(self, handler: Handler[Any, Any], frame: object) -> None:
        """Run a request's handler (the one HTTP calls too) and queue its answer."""
        try:
            answer = handler.answer(frame, await handler.run(self._chat, self.device, frame))
        except ChatError as err:
            answer = error_frame(err, Handler.ref(frame))
        except Exception:
            if not handler.beside:
                raise  # in frame order: receive() answers ``internal``
            log.exception("history read failed")
            answer = error_frame(
                ChatError(ErrorCode.UNAVAILABLE, "history store did not answer; retry"),
                Handler.ref(frame),
            )
        if answer is not None:
            await self._outbox.put(answer)

    async def _reply_error(self, err: ChatError, ref: str | None = None) -> None:
        await self._outbox.put(error_frame(err, ref))


# --- long polling -------------------------------------------------------------------------


class Unacked(NamedTuple):
    """What one poll sent a device (everything in ``(start, end]`` not sent by the device's
    user), kept by this process until the next poll acknowledges it or ``expires_ms``."""

    expires_ms: int
    start: int
    end: int
    heads: Tracked | None


_UNACKED_COST = 100_000
"""Heads (a few hundred bytes each) and devices kept by a process's :class:`LongPolls` for all
devices together; beyond it the oldest devices' go, and their next poll reads its range back."""


class LongPolls:
    """This process's pending polls and what its recent polls sent, by device.

    Any process answers any poll, so nothing here is needed: a poll's session ends with the
    poll. What is kept only saves work. A newer poll of a device ends the one pending here
    (it answers with what it has). And the heads of what a poll sent, kept until the next
    poll acknowledges them or ``poll_timeout_s`` + 10 s have passed, turn that poll's cursor
    into delivered receipts without reading the range back from the inbox; when the next poll
    lands on another process, or later, it reads the range back instead (bounded, see
    :meth:`DeviceSession._track_range`)."""

    def __init__(self, chat: Chat, poll_timeout_s: float) -> None:
        self._chat = chat
        self._pending: dict[str, DeviceSession] = {}
        # insertion order is expiry order: every entry lives the same time
        self._unacked: dict[str, Unacked] = {}
        self._cost = 0  # see _UNACKED_COST
        self._ttl_ms = int((poll_timeout_s + 10) * 1000)

    async def poll(
        self,
        device: Device,
        cursor: int | None,
        timeout: float,
        transport: Transport,
        gone: asyncio.Future[None] | None = None,
        protocol: int = 1,
    ) -> int:
        """Answer one poll through ``transport`` (frames) and return the next cursor; see
        :meth:`DeviceSession.poll`. ``gone``: resolved by the frontend when the client went
        away, which ends the poll at once (else it would hold its subscription until the
        timeout)."""
        if self._chat.rate_limits is not None:
            await self._chat.rate_limits.poll(device.id)  # polls per device
        session = DeviceSession(self._chat, device, transport)
        previous = self._pending.get(device.id)
        if previous is not None:
            previous.end()
        self._pending[device.id] = session
        if gone is not None:
            gone.add_done_callback(lambda _: session.end())
        sent = self._take(device.id)
        try:
            position = await session.poll(cursor, timeout, protocol, sent)
            self._keep(device.id, session.unacked(position, self._expiry()))
            return position
        finally:
            if self._pending.get(device.id) is session:
                del self._pending[device.id]
            await session.aclose()

    def _expiry(self) -> int:
        return self._chat.clock.now_ms() + self._ttl_ms

    def _take(self, device_id: str) -> Unacked | None:
        self._expire()
        sent = self._unacked.pop(device_id, None)
        if sent is not None:
            self._cost -= _cost(sent)
        return sent

    def _keep(self, device_id: str, sent: Unacked) -> None:
        self._take(device_id)
        if sent.end == sent.start:
            return  # nothing sent: the next poll has nothing to acknowledge
        self._unacked[device_id] = sent
        self._cost += _cost(sent)
        while self._cost > _UNACKED_COST:
            self._take(next(iter(self._unacked)))

    def _expire(self) -> None:
        now = self._chat.clock.now_ms()
        unacked = self._unacked
        while unacked:
            device_id, sent = next(iter(unacked.items()))
            if sent.expires_ms > now:
                return
            del unacked[device_id]
            self._cost -= _cost(sent)


def _cost(sent: Unacked) -> int:
    return 1 + (len(sent.heads) if sent.heads else 0)


class PollTransport:
    """:class:`core.ports.Transport` for one poll: the frames of its answer, in order. Sending
    never waits (the answer is bounded by the core: one inbox page and the events that came
    meanwhile), and there is nothing to close: the poll ends with its answer."""

    __slots__ = ("frames",)
    kind = "longpoll"

    def __init__(self) -> None:
        self.frames: list[str] = []

    async def send(self, frame: str) -> None:
        self.frames.append(frame)

    async def close(self, code: CloseCode, reason: str) -> None:
        pass

    def abort(self) -> None:
        pass
