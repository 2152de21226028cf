"""The history archiver: every inbox message into the history store, acknowledged after.

Each message sits in several inboxes (a 1:1 in both participants', a group's in every
member's); one copy is written and the others are acknowledged as they are. History writes are
idempotent, so a batch delivered again after a crash (not acknowledged within
``archiver_ack_wait_s``) is simply written again: kill an archiver at any moment and history
still holds each message exactly once. Any number of archivers may run: they pull from one
durable consumer and share the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from core import metrics
from core.model import ChatMessage
from core.ports import HistoryStore
from jetstream.streams import JetStreamSettings

log = logging.getLogger(__name__)

_decode = msgspec.json.Decoder(ChatMessage).decode


class ArchiverLag(msgspec.Struct, frozen=True):
    pending: int  # not yet delivered to any archiver
    unacknowledged: int  # delivered, not yet written and acknowledged
    archived_up_to: int  # every inbox sequence up to this one is archived

    @property
    def total(self) -> int:
        return self.pending + self.unacknowledged


async def archiver_lag(js: JetStreamContext, s: JetStreamSettings) -> ArchiverLag:
    info = await js.consumer_info(s.inbox_stream, s.archiver_consumer)
    return ArchiverLag(
        pending=info.num_pending or 0,
        unacknowledged=info.num_ack_pending or 0,
        archived_up_to=info.ack_floor.stream_seq if info.ack_floor else 0,
    )


def to_archive(msg: Msg) -> ChatMessage | None:
    """The message to store for this inbox entry, or None for the other copies: of a 1:1
    message the recipient's copy is kept, of a group entry the sender's (every member has
    one; the sender always does)."""
    message = _decode(msg.data)
    owner = msg.subject.rpartition(".")[2]
    keep = message.sender if message.conv.startswith("group.") else message.to
    return message if owner == keep else None


class Archiver:
    def __init__(
        self,
        js: JetStreamContext,
        store: HistoryStore,
        settings: JetStreamSettings,
        batch: int = 500,
    ) -> None:
        self._js = js
        self._store = store
        self._s = settings
        self._batch = batch

    async def run(self) -> None:
        """Archive until cancelled."""
        sub = await self._js.pull_subscribe_bind(
            durable=self._s.archiver_consumer, stream=self._s.inbox_stream
        )
        lag_task = asyncio.create_task(self._report_lag())
        try:
            while True:
                try:
                    msgs = await sub.fetch(self._batch, timeout=1.0)
                except TimeoutError:
                    # nats-py's fetch can turn a cancellation that meets its own timeout
                    # into a TimeoutError: honour the cancellation, or shutdown would wait
                    # on an archiver that keeps fetching
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError from None
                    continue
                await self._archive(msgs)
        finally:
            lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag_task

    async def _archive(self, msgs: list[Msg]) -> None:
        messages: list[ChatMessage] = []
        for msg in msgs:
            try:
                message = to_archive(msg)
            except msgspec.DecodeError:
                log.error("undecodable inbox message dropped", extra={"subject": msg.subject})
                await msg.term()
                continue
            if message is not None:
                messages.append(message)
        # A store that is down stops the archiver here (the inbox keeps the messages, the lag
        # grows and shows it); it resumes when the store answers.
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.1, max=5),
            retry=retry_if_exception_type(Exception),
            before_sleep=lambda state: log.warning(
                "history write failed; retrying", extra={"error": repr(state.outcome)}
            ),
        ):
            with attempt:
                await self._store.write(messages)
        for msg in msgs:
            await msg.ack()
        metrics.ARCHIVED.inc(len(messages))

    async def _report_lag(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                metrics.ARCHIVER_LAG.set((await archiver_lag(self._js, self._s)).total)
            await asyncio.sleep(5)
