"""One client connection: frames in, frames out, whatever the transport.

The frontend authenticates, accepts, then feeds every received frame to
:meth:`Connection.receive` and calls :meth:`Connection.aclose` when the peer is gone. Tasks do
the rest: the writer (the only one touching ``Transport.send``), the sender (batches this
device's sends, in order) and, after ``hello``, the feed (replay, then live). The writer and
the sender run only while they have work: they start when a frame or a send arrives and end
when none is left, so an idle connection holds no task of its own but the feed. Acknowledged
positions are written by one task per process (:class:`core.chat.Chat`), not one per connection.
Why: memory per idle connection is what bounds how many one process holds (tens of thousands),
and every task, queue or event costs about a kilobyte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine

from core import metrics
from core.chat import Chat
from core.errors import ChatError, ErrorCode
from core.feed import InboxFeed
from core.messaging import SendRequest
from core.model import Device, Sent
from core.outbox import Outbox, Wake
from core.ports import InboxEntry, Transport
from core.presence import without_last_seen
from core.protocol import (
    PROTOCOL_VERSION,
    Ack,
    CaughtUp,
    Conversations,
    GetConversations,
    GetHistory,
    GetPresence,
    GetReceipts,
    Hello,
    HistoryPage,
    Ping,
    Pong,
    PresenceEvent,
    PresenceList,
    Read,
    Receipts,
    ResyncNeeded,
    Send,
    SentFrame,
    Typing,
    Welcome,
    decode_client_frame,
    encode,
    error_frame,
    msg_frames,
)
from core.receipts import Head, decode_head, delivered_marks

log = logging.getLogger(__name__)

CLOSE_SLOW_CONSUMER = 4008  # the client did not read its frames in time: reconnect with cursor
SEND_BATCH = 64  # sends taken from the queue per write to JetStream

_MAX_READ_BACKOFF_S = 0.5
_FIRST_REPLAY_PAGE = 256
"""Entries of a replay's first read; each next read is 4 times larger, up to replay_batch.
JetStream takes about 8 us per message of a batched direct get (nats-server 2.15, 2 cores),
so a first read of 4096 would hold the first frame back by some 30 ms."""
_TRACKED_DELIVERIES = 20_000


class Connection:
    def __init__(self, chat: Chat, device: Device, transport: Transport, kind: str = "ws") -> None:
        self._chat = chat
        self._limits = chat.limits
        self.device = device
        self._transport = transport
        self._outbox = Outbox(self._limits.outbox_bytes, self._start_writer)
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
        self._closer: asyncio.Future[None] | None = None
        self._kind = kind
        self._unwatch_presence: Callable[[], None] | None = None
        # (seq, head) of messages sent and not yet acknowledged; bounded: beyond it the
        # oldest go without a delivered receipt (the read receipt still comes). Created with
        # the first message.
        self._delivered: deque[tuple[int, Head]] | None = None
        self._attached = False
        self._protocol = 1  # the version the client speaks, from its hello

    @property
    def user(self) -> str:
        return self.device.user_id

    async def open(self) -> None:
        self._chat.attach(self)
        self._attached = True
        await self._start_presence()
        metrics.CONNECTIONS.labels(self._kind).inc()
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
        if isinstance(frame, Send):
            await self._queue_send(frame)
        elif isinstance(frame, Ack):
            if frame.seq < 0:
                await self._reply_error(ChatError(ErrorCode.INVALID_ARGUMENT, "seq must be >= 0"))
                return
            if frame.seq > self._acked:
                self._acked = frame.seq
                if self._attached:
                    self._chat.acked(self)
        elif isinstance(frame, Hello):
            if self._feed_task is not None and not self._feed_task.done():
                await self._reply_error(
                    ChatError(ErrorCode.INVALID_ARGUMENT, "hello was already received")
                )
                return
            if frame.protocol < 1:
                await self._reply_error(
                    ChatError(ErrorCode.INVALID_ARGUMENT, "protocol must be >= 1")
                )
                return
            self._protocol = min(frame.protocol, PROTOCOL_VERSION)
            self._feed_task = self._spawn(self._feed_loop(frame.cursor))
        elif isinstance(frame, Ping):
            await self._chat.presence.beat(self.user, self.device.id)  # the heartbeat
            await self._outbox.put(encode(Pong()))
        elif isinstance(frame, Typing):
            try:
                await self._chat.events.typing(self.user, self.device.id, frame.conv, frame.state)
            except ChatError as err:
                await self._reply_error(err)
        elif isinstance(frame, Read):
            try:
                await self._chat.receipts.read(self.user, frame.conv, frame.up_to)
            except ChatError as err:
                await self._reply_error(err)
        elif isinstance(frame, GetHistory | GetConversations | GetReceipts | GetPresence):
            # Reads run beside the frame loop (they wait on the store); answers carry ``ref``.
            if self._reads is None:
                self._reads = set()
            self._reads.add(self._spawn(self._answer_read(frame)))

    async def close(self, code: int, reason: str) -> None:
        """Close from the server side (shutdown, slow consumer)."""
        if not self._closed:
            self._closed = True
            try:
                async with asyncio.timeout(self._limits.close_timeout_s):
                    await self._transport.close(code, reason)
            except TimeoutError:
                self._transport.abort()  # the close frame is stuck behind unread data
            except Exception:  # noqa: S110 - already gone: nothing left to close
                pass

    def close_soon(self, code: int, reason: str) -> None:
        """:meth:`close` from synchronous code (a NATS callback)."""
        self._closer = asyncio.ensure_future(self.close(code, reason))

    async def aclose(self) -> None:
        """The peer is gone: stop the tasks and save the acked position."""
        if self._unwatch_presence is not None:
            self._unwatch_presence()
        if self._attached:
            self._attached = False
            self._chat.detach(self)
            metrics.CONNECTIONS.labels(self._kind).dec()
        self._closed = True
        tasks = [t for t in (self._writer, self._sender, self._feed_task) if t is not None]
        tasks += self._reads or ()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.flush_cursor()

    # --- tasks ---------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        # Tasks of one connection, not supervised: they end with it, and a failure closes it
        # (1011) so that the client reconnects and resumes from its cursor.
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
            self.close_soon(1011, "internal error")

    def _start_writer(self) -> None:
        if self._writer is None and not self._closed:
            self._writer = self._spawn(self._write_loop())

    async def _write_loop(self) -> None:
        """Write queued frames until none is left (then the task ends: a later frame starts
        another, see :meth:`_start_writer`)."""
        timeout = self._limits.send_timeout_s
        try:
            while (frame := self._outbox.take()) is not None:
                try:
                    await asyncio.wait_for(self._transport.send(frame), timeout)
                except TimeoutError:
                    log.info("slow consumer closed", extra={"device": self.device.id})
                    metrics.SLOW_CONSUMERS.inc()
                    await self.close(
                        CLOSE_SLOW_CONSUMER, "slow consumer: reconnect with your cursor"
                    )
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
        """Take the queued sends in batches, in order, until none is left."""
        messaging = self._chat.messaging
        try:
            while sends := self._sends:
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

    async def flush_cursor(self) -> None:
        """Store the acknowledged position and send the delivered receipts it implies (called
        every ``cursor_flush_s`` by :class:`core.chat.Chat` after an ack, and on close)."""
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

    async def _deliver(self, entries: list[InboxEntry]) -> None:
        """Queue ``entries`` for the client, in order: several per frame for protocol 2."""
        for entry in entries:
            self._track(entry)
        frames = msg_frames(entries, self._protocol, self._limits.msgs_frame_bytes)
        for frame in frames:
            await self._outbox.put(frame)
        metrics.DELIVERED.inc(len(entries))

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
        inbox = self._chat.inbox
        if cursor is None:
            cursor = await self._chat.cursors.get(self.user, self.device.id) or 0
        elif cursor < 0:
            await self._reply_error(ChatError(ErrorCode.INVALID_ARGUMENT, "cursor must be >= 0"))
            return
        first, last = await inbox.bounds()
        if cursor > last or 0 < cursor < first - 1:
            await self._outbox.put(encode(ResyncNeeded(cursor, first, last)))
            return

        feed = InboxFeed(cursor, self._limits.live_buffer)
        wake = Wake()

        def on_live(entry: InboxEntry) -> None:
            feed.on_live(entry)
            wake.set()

        def on_event(event: bytes) -> None:
            if not self._outbox.offer(event.decode()):
                metrics.EVENTS_DROPPED.labels("slow_client").inc()

        unwatch = await inbox.watch(self.user, on_live, on_event)
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

    async def _start_presence(self) -> None:
        """Online now; and from now on told of changes of everyone this user may see."""
        chat = self._chat
        await chat.presence.beat(self.user, self.device.id)
        visible = await chat.social.visible(self.user)
        hides_own = bool(await chat.social.hidden([self.user]))

        def deliver(event: PresenceEvent) -> None:
            frame = encode(without_last_seen(event) if hides_own else event)
            if not self._outbox.offer(frame):
                metrics.EVENTS_DROPPED.labels("slow_client").inc()

        self._unwatch_presence = chat.presence.watch(visible, deliver)

    async def _answer_read(
        self, frame: GetHistory | GetConversations | GetReceipts | GetPresence
    ) -> None:
        history = self._chat.history
        try:
            if isinstance(frame, GetPresence):
                items = await self._chat.presence.query(self.user, frame.users)
                answer: str = encode(PresenceList(frame.ref, items))
            elif isinstance(frame, GetReceipts):
                states = await self._chat.receipts.states(self.user, frame.conv)
                answer = encode(Receipts(frame.ref, frame.conv, states))
            elif isinstance(frame, GetHistory):
                messages = await history.page(
                    self.user,
                    frame.conv,
                    before=frame.before,
                    after=frame.after,
                    around=frame.around,
                    limit=frame.limit,
                )
                answer = encode(HistoryPage(frame.ref, frame.conv, messages))
            else:
                summaries = await self._chat.receipts.conversations(self.user, frame.limit)
                answer = encode(Conversations(frame.ref, summaries))
        except ChatError as err:
            answer = error_frame(err, frame.ref)
        except Exception:
            log.exception("history read failed")
            answer = error_frame(
                ChatError(ErrorCode.UNAVAILABLE, "history store did not answer; retry"), frame.ref
            )
        await self._outbox.put(answer)

    async def _reply_error(self, err: ChatError, ref: str | None = None) -> None:
        await self._outbox.put(error_frame(err, ref))
