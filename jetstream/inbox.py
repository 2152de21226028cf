"""Per-user inboxes in one JetStream stream (implements core.ports.InboxLog)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from core.errors import ChatError, ErrorCode
from core.ports import InboxEntry
from jetstream.streams import JetStreamSettings

_json = msgspec.json.Encoder()
log = logging.getLogger(__name__)


class _Watchers:
    """One NATS subscription per user per process, shared by that user's connections here.

    nats-py gives each callback subscription a task and an asyncio.Queue of its own (about
    4 KB); with one subscription per connected user that was most of an idle connection's
    cost. So the subscription is made with ``future=`` set to this object: nats-py then hands
    every message to its ``set_result``, synchronously, in order, from the task reading the
    NATS connection (the path meant for a request's one reply, which never ends a
    subscription by itself), and makes neither task nor queue. The callbacks are synchronous
    and only buffer or queue (core.feed, the outbox), so nothing waits on that task.
    """

    __slots__ = ("callbacks", "inbox_prefix", "sub")

    def __init__(self, inbox_prefix: str) -> None:
        self.sub: Subscription | None = None
        self.inbox_prefix = inbox_prefix
        self.callbacks: list[tuple[Callable[[InboxEntry], None], Callable[[bytes], None]]] = []

    def cancelled(self) -> bool:
        return False

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
            for entry_callback, _ in list(self.callbacks):
                entry_callback(entry)
        except Exception:
            log.exception("live message dispatch failed", extra={"subject": msg.subject})


class JetStreamInbox:
    def __init__(self, nc: NATS, js: JetStreamContext, settings: JetStreamSettings) -> None:
        self._nc = nc
        self._js = js
        self._s = settings
        self._reply_prefix = ""
        self._replies: dict[str, asyncio.Queue[Msg]] = {}
        self._watchers: dict[str, _Watchers] = {}
        self._watch_lock = asyncio.Lock()

    async def start(self) -> None:
        """One reply subscription for every read this process makes (not one per read)."""
        self._reply_prefix = self._nc.new_inbox()
        await self._nc.subscribe(f"{self._reply_prefix}.*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        queue = self._replies.get(msg.subject.rpartition(".")[2])
        if queue is not None:
            queue.put_nowait(msg)

    def subject(self, user: str) -> str:
        return f"{self._s.inbox_subject}.{user}"

    async def append(self, copies: Sequence[tuple[str, str, bytes]]) -> None:
        # publish_async writes in call order on one connection, so JetStream stores the copies
        # in that order. Its futures can hang on an error ack (nats.py #985): bound the wait.
        futures = [
            await self._js.publish_async(
                self.subject(user), data, headers={"Nats-Msg-Id": dedupe_key}
            )
            for user, dedupe_key, data in copies
        ]
        try:
            async with asyncio.timeout(self._s.publish_timeout_s):
                await asyncio.gather(*futures)
        except TimeoutError:
            for f in futures:
                f.cancel()
            raise ChatError(
                ErrorCode.UNAVAILABLE, "JetStream did not acknowledge the message in time; retry"
            ) from None

    async def read(self, user: str, after_seq: int, limit: int) -> list[InboxEntry]:
        request = {"seq": after_seq + 1, "next_by_subj": self.subject(user), "batch": limit}
        entries: list[InboxEntry] = []
        prev = after_seq
        for msg in await self.direct_batch(self._s.inbox_stream, request):
            seq = int((msg.headers or {})["Nats-Sequence"])
            entries.append(InboxEntry(seq, prev, msg.data))
            prev = seq
        return entries

    async def direct_batch(self, stream: str, request: dict[str, object]) -> list[Msg]:
        """A batched direct get (ADR-31) on any stream: no consumer, answered by any replica.
        nats-py has no helper for it: the replies come to our reply prefix until a 204 (end
        of batch) or 404 (nothing matched)."""
        token = self._nc._nuid.next().decode()
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
                    status = (msg.headers or {}).get("Status")
                    if status is None:
                        out.append(msg)
                    elif status in ("204", "404"):
                        return out
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
                sub = await self._nc.subscribe(f"{self._s.live_prefix}.*.{user}", future=watchers)  # type: ignore[arg-type]
                # the queue nats-py made anyway stays empty on this path: let it go
                sub._pending_queue = None  # type: ignore[assignment]
                watchers.sub = sub
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
