"""Per-user inboxes in one JetStream stream (implements core.ports.InboxLog)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from core.errors import ChatError, ErrorCode
from core.ports import InboxEntry, InboxPage
from jetstream.natspy import Dispatcher, NatsPy
from jetstream.publisher import Publisher
from jetstream.streams import JetStreamSettings

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()

RESYNC_USERS_PER_READ = 64
"""Users whose newest inbox entry one read asks for after a NATS reconnect (a batched direct
get with ``multi_last``): 10,000 watched users take 157 reads, not 10,000."""
_RESYNC_PAUSE_S = 0.005
"""Between those reads, so that the re-reads they cause (a session that missed something
reads it back) come spread over a short time, not all at once: 10,000 users in about 1 s."""
_RESYNC_GIVE_UP_S = 60.0
"""How long a resync retries while JetStream is not answering yet (it recovers its streams
after a restart); a later reconnect starts another."""
_SEQ = b"\r\nNats-Sequence:"
_PENDING = b"\r\nNats-Num-Pending:"


class _Read:
    """An inbox read in flight: its entries as the replies come, done at the end of batch."""

    __slots__ = ("done", "entries", "error", "pending", "prev")

    def __init__(self, after_seq: int) -> None:
        self.entries: list[InboxEntry] = []
        self.prev = after_seq
        self.pending = 0
        self.error = ""
        self.done = asyncio.get_running_loop().create_future()

    def reply(self, headers: bytes | None, data: bytes) -> None:
        """One reply of a batched direct get, from its raw NATS headers: a message with
        ``Nats-Sequence`` (appended by the server after the stored headers, hence the search
        from the end), or the status that ends the batch (204 with ``Nats-Num-Pending``: how
        many more the subject holds; 404: nothing after the start). Never raises: it runs
        inside nats-py's reader."""
        if self.done.done():
            return
        if headers and headers[8] != 32:  # "NATS/1.0\r\n...", not "NATS/1.0 204...": a message
            try:
                seq = int(headers.rpartition(_SEQ)[2].partition(b"\r")[0])
            except ValueError:
                self._finish("a reply without Nats-Sequence")
                return
            self.entries.append(InboxEntry(seq, self.prev, data))
            self.prev = seq
        elif not headers:
            self._finish("a reply without headers")
        elif headers[9:12] == b"204":  # "NATS/1.0 204 EOB\r\nNats-Num-Pending: N\r\n..."
            pending = headers.partition(_PENDING)[2].partition(b"\r")[0]
            self.pending = int(pending) if pending.strip().isdigit() else 0
            self._finish("")
        elif headers[9:12] == b"404":
            self._finish("")
        else:
            self._finish(f"status {headers[9:12].decode(errors='replace')}")

    def _finish(self, error: str) -> None:
        self.error = error
        self.done.set_result(None)


class _Watchers(Dispatcher):
    """One NATS subscription per user per process, shared by that user's connections here.

    Messages come to :meth:`set_result` from the task reading the NATS connection, without a
    task or queue per subscription (jetstream.natspy, "Dispatch subscriptions": they were
    most of an idle connection's cost). The callbacks are synchronous and only buffer or
    queue (core.feed, the outbox), so nothing waits on that task.
    """

    __slots__ = ("callbacks", "inbox_prefix", "sub")

    def __init__(self, inbox_prefix: str) -> None:
        self.sub: Subscription | None = None
        self.inbox_prefix = inbox_prefix
        self.callbacks: list[tuple[Callable[[InboxEntry], None], Callable[[bytes], None]]] = []

    def entry(self, entry: InboxEntry) -> None:
        for entry_callback, _ in list(self.callbacks):
            entry_callback(entry)

    def set_result(self, msg: Msg) -> None:
        try:
            if not msg.subject.startswith(self.inbox_prefix):
                for _, event_callback in list(self.callbacks):
                    event_callback(msg.data)
                return
            headers = msg.headers or {}
            entry = InboxEntry(
                int(headers["Nats-Sequence"]),
                int(headers.get("Nats-Last-Sequence", 0)),
                msg.data,
            )
            self.entry(entry)
        except Exception:
            log.exception("live message dispatch failed", extra={"subject": msg.subject})


class JetStreamInbox:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        settings: JetStreamSettings,
        publisher: Publisher,
        natspy: NatsPy,
    ) -> None:
        self._nc = nc
        self._js = js
        self._publisher = publisher
        self._natspy = natspy
        self._s = settings
        self._reply_prefix = ""
        self._tokens = itertools.count()  # names each read's replies under the reply prefix
        self._replies: dict[str, asyncio.Queue[Msg]] = {}
        self._reads: dict[bytes, _Read] = {}
        self._raw_replies = False
        self._watchers: dict[str, _Watchers] = {}
        self._watch_lock = asyncio.Lock()
        self._reconnected = asyncio.Event()  # set by reconnected(), taken by resync_watchers()

    async def start(self) -> None:
        """One reply subscription for every read this process makes (not one per read).

        A catch-up's cost is mostly per message, and a read needs one header of each reply
        (``Nats-Sequence``): inbox reads take their replies raw from nats-py's parser when
        this nats-py allows it (jetstream.natspy, "Raw replies": reads then run about twice
        as fast), else as nats-py messages like every other direct get here."""
        self._reply_prefix = self._nc.new_inbox()
        sub = await self._nc.subscribe(f"{self._reply_prefix}.*", cb=self._on_reply)
        self._raw_replies = self._natspy.route_raw_replies(self._nc, sub, self._reads)

    async def _on_reply(self, msg: Msg) -> None:
        queue = self._replies.get(msg.subject.rpartition(".")[2])
        if queue is not None:
            queue.put_nowait(msg)

    def subject(self, user: str) -> str:
        return f"{self._s.inbox_subject}.{user}"

    async def append(self, copies: Sequence[tuple[str, str, bytes]]) -> None:
        # Publishes go out in call order on one connection, so JetStream stores the copies in
        # that order; one bounded wait for all their acknowledgements.
        futures = [
            await self._publisher.publish(
                self.subject(user), data, headers={"Nats-Msg-Id": dedupe_key}
            )
            for user, dedupe_key, data in copies
        ]
        await self._publisher.acked(futures)

    async def read(self, user: str, after_seq: int, limit: int) -> list[InboxEntry]:
        return (await self.read_page(user, after_seq, limit, 0)).entries

    async def read_page(self, user: str, after_seq: int, limit: int, max_bytes: int) -> InboxPage:
        request: dict[str, object] = {
            "seq": after_seq + 1,
            "next_by_subj": self.subject(user),
            "batch": limit,
        }
        if max_bytes > 0:
            request["max_bytes"] = max_bytes
        if not self._raw_replies:
            msgs, pending = await self._direct_batch(self._s.inbox_stream, request)
            entries: list[InboxEntry] = []
            prev = after_seq
            for msg in msgs:
                seq = int((msg.headers or {})["Nats-Sequence"])
                entries.append(InboxEntry(seq, prev, msg.data))
                prev = seq
            return InboxPage(entries, pending > 0)
        token = str(next(self._tokens)).encode()
        read = self._reads[token] = _Read(after_seq)
        try:
            await self._nc.publish(
                f"$JS.API.DIRECT.GET.{self._s.inbox_stream}",
                _json.encode(request),
                reply=f"{self._reply_prefix}.{token.decode()}",
            )
            async with asyncio.timeout(self._s.read_timeout_s):
                await read.done
        except TimeoutError:
            raise ChatError(ErrorCode.UNAVAILABLE, "read timed out; retry") from None
        finally:
            del self._reads[token]
        if read.error:
            raise ChatError(ErrorCode.UNAVAILABLE, f"read failed: {read.error}")
        return InboxPage(read.entries, read.pending > 0)

    async def direct_batch(self, stream: str, request: dict[str, object]) -> list[Msg]:
        """A batched direct get (ADR-31) on any stream: no consumer, answered by any replica.
        nats-py has no helper for it: the replies come to our reply prefix until a 204 (end
        of batch) or 404 (nothing matched)."""
        return (await self._direct_batch(stream, request))[0]

    async def _direct_batch(self, stream: str, request: dict[str, object]) -> tuple[list[Msg], int]:
        """:meth:`direct_batch`, and how many more messages matched after the batch (the
        end-of-batch reply's ``Nats-Num-Pending``)."""
        token = str(next(self._tokens))
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._replies[token] = queue
        out: list[Msg] = []
        try:
            await self._nc.publish(
                f"$JS.API.DIRECT.GET.{stream}",
                _json.encode(request),
                reply=f"{self._reply_prefix}.{token}",
            )
            async with asyncio.timeout(self._s.read_timeout_s):
                while True:
                    msg = await queue.get()
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status is None:
                        out.append(msg)
                    elif status == "204":
                        return out, int(headers.get("Nats-Num-Pending", 0))
                    elif status == "404":
                        return out, 0
                    else:
                        raise ChatError(ErrorCode.UNAVAILABLE, f"read failed: status {status}")
        except TimeoutError:
            raise ChatError(ErrorCode.UNAVAILABLE, "read timed out; retry") from None
        finally:
            del self._replies[token]

    async def bounds(self) -> tuple[int, int]:
        state = (await self._js.stream_info(self._s.inbox_stream)).state
        return state.first_seq, state.last_seq

    async def notify(self, users: Sequence[str], event: bytes) -> None:
        for user in users:
            await self._nc.publish(f"{self._s.live_prefix}.event.{user}", event)

    async def watch(
        self,
        user: str,
        on_entry: Callable[[InboxEntry], None],
        on_event: Callable[[bytes], None],
    ) -> Callable[[], Awaitable[None]]:
        async with self._watch_lock:
            watchers = self._watchers.get(user)
            if watchers is None:
                watchers = self._watchers[user] = _Watchers(f"{self._s.live_prefix}.inbox.")
                # one subscription for both: chat.live.inbox.<user> and chat.live.event.<user>
                watchers.sub = await self._natspy.subscribe_dispatch(
                    self._nc, f"{self._s.live_prefix}.*.{user}", watchers
                )
            callbacks = (on_entry, on_event)
            watchers.callbacks.append(callbacks)

        async def unwatch() -> None:
            async with self._watch_lock:
                watchers.callbacks.remove(callbacks)
                if not watchers.callbacks and self._watchers.get(user) is watchers:
                    del self._watchers[user]
                    if watchers.sub is not None:
                        with contextlib.suppress(Exception):
                            await watchers.sub.unsubscribe()

        return unwatch

    # --- after a reconnect ----------------------------------------------------------------

    def reconnected(self) -> None:
        """The NATS connection came back (nats-py's ``reconnected_cb``, which runs once the
        subscriptions are made again): what was RePublished meanwhile reached no watcher of
        this process, and a missed entry is only noticed when a later one arrives, which may
        be never. :meth:`resync_watchers` tells every watcher to read what it missed."""
        self._reconnected.set()

    async def resync_watchers(self) -> None:
        """The process's one resync task (under the supervisor, forever): after each
        reconnect, hand every watcher its user's newest inbox entry with ``prev_seq = seq``.
        A session that has it drops it; one that does not (its position is before it) sees a
        gap and reads from its position, through its own feed (core.feed), so order and
        de-duplication hold as for any gap. One read asks for the newest entry of
        :data:`RESYNC_USERS_PER_READ` users, and each user's entry serves all its sessions
        here: idle sessions that missed nothing cost nothing.

        Why (issue 13, finding i): after nats-server restarted, a message acknowledged to its
        sender sat undelivered on another process's live WebSocket until some later message
        arrived (4 of 6 trials, more than 8 s)."""
        while True:
            await self._reconnected.wait()
            self._reconnected.clear()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _RESYNC_GIVE_UP_S
            users = list(self._watchers)
            backoff = 0.05
            while users and not self._reconnected.is_set():
                chunk, rest = users[:RESYNC_USERS_PER_READ], users[RESYNC_USERS_PER_READ:]
                try:
                    users = await self._resync(chunk) + rest
                except ChatError as err:  # JetStream not back yet: retry the same users
                    if loop.time() > deadline:
                        log.warning("inbox resync after reconnect gave up", extra={"why": err})
                        break
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
                backoff = 0.05
                await asyncio.sleep(_RESYNC_PAUSE_S)

    async def _resync(self, users: list[str]) -> list[str]:
        """Nudge the watchers of ``users`` (see :meth:`resync_watchers`); returns those the
        read did not get to (its byte bound), to ask again."""
        subjects = {self.subject(u): u for u in users}
        request = {"multi_last": list(subjects), "batch": len(subjects), "max_bytes": 1 << 20}
        msgs, pending = await self._direct_batch(self._s.inbox_stream, request)
        answered = set()
        for msg in msgs:
            headers = msg.headers or {}
            user = subjects.get(headers.get("Nats-Subject", ""))
            if user is None:
                continue
            answered.add(user)
            watchers = self._watchers.get(user)
            if watchers is not None:
                seq = int(headers["Nats-Sequence"])
                watchers.entry(InboxEntry(seq, seq, msg.data))
        if not pending or not answered:
            return []
        return [u for u in users if u not in answered]
