"""The history archiver's JetStream side: the durable consumer ``archiver`` on the inboxes, run
by the consumer runner with the core's handler (core/archive.py), and its lag.

Any number of archivers may run: they pull from one durable consumer and share the work. The
runner acknowledges a batch only after the handler wrote it (and parked what the store refused
in the dead-letter stream, :class:`DeadLetterStream`); the supervisor restarts the runner when
it fails. The lag is read from the consumer's state on the server by a worker of its own,
so the gauge keeps telling the truth while the archiver is down (it used to be reported by a
task inside the archiver, and read 0 once that died).
"""

from __future__ import annotations

import asyncio

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from core import metrics
from core.archive import Archiver
from core.ports import HistoryStore, InboxCopy
from jetstream.consumer import PullConsumer
from jetstream.streams import JetStreamSettings, archiver_consumer_config

LAG_EVERY_S = 5.0
"""How often the lag gauge is refreshed: one consumer-info request per archiving process."""


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


async def report_lag(js: JetStreamContext, s: JetStreamSettings) -> None:
    """Set ``jetchat_archiver_lag_messages`` every :data:`LAG_EVERY_S`, forever. Raises when the
    consumer's state cannot be read (the supervisor restarts it; the gauge keeps its last value
    and ``jetchat_worker_up{worker="archiver-lag"}`` says it is stale)."""
    while True:
        metrics.ARCHIVER_LAG.set((await archiver_lag(js, s)).total)
        await asyncio.sleep(LAG_EVERY_S)


def inbox_copy(msg: Msg) -> InboxCopy:
    """The core's view of an inbox message: whose inbox (the subject's last token), the
    stored bytes and its stream sequence."""
    return InboxCopy(msg.subject.rpartition(".")[2], msg.data, msg.metadata.sequence.stream)


class DeadLetterStream:
    """Implements ``core.ports.DeadLetters`` on the stream ``CHAT_DEAD``: one entry per parked
    message, its data the inbox message's bytes as stored (JSON, as ``nats stream get`` shows
    them), its headers what an operator needs to decide (docs/operations.md):

    - ``Jetchat-Reason``: the store's error, one line, never the text;
    - ``Jetchat-Message-Id``: the message's id (its conversation is in the data);
    - ``Jetchat-Inbox-Seq`` and ``Jetchat-Inbox-Subject``: the copy parked, in ``CHAT_INBOX``
      (while the inbox keeps it);
    - ``Nats-Msg-Id``: ``history.<inbox seq>``, so parking it again after a crash within the
      duplicate window stores nothing new."""

    def __init__(self, js: JetStreamContext, s: JetStreamSettings) -> None:
        self._js = js
        self._s = s

    async def park(self, copy: InboxCopy, message_id: str, reason: str) -> None:
        headers = {
            "Jetchat-Reason": reason,
            "Jetchat-Message-Id": message_id,
            "Jetchat-Inbox-Seq": str(copy.seq),
            "Jetchat-Inbox-Subject": f"{self._s.inbox_subject}.{copy.user}",
        }
        if copy.seq:
            headers["Nats-Msg-Id"] = f"history.{copy.seq}"
        await self._js.publish(
            self._s.dead_subject,
            copy.data,
            timeout=self._s.publish_timeout_s,
            stream=self._s.dead_stream,
            headers=headers,
        )


def archiver(
    nc: NATS, js: JetStreamContext, store: HistoryStore, s: JetStreamSettings, batch: int = 500
) -> PullConsumer[InboxCopy]:
    """The archiver: run it (``.run()``) under the supervisor."""
    return PullConsumer(
        nc,
        js,
        s.inbox_stream,
        archiver_consumer_config(s),
        inbox_copy,
        Archiver(store, DeadLetterStream(js, s)),
        batch=batch,
    )
