"""Archiving: every inbox message into the history store, once (the archiver's handler).

Each message sits in several inboxes (a 1:1 in both participants', a group's in every
member's); one copy is written and the others are passed over. History writes are idempotent,
so a batch delivered again after a crash (the runner acknowledges only after :meth:`handle`
returned) is simply written again: kill an archiver at any moment and history still holds each
message exactly once. The consumer runner and its restarts are jetstream/consumer.py's and the
supervisor's; the archiver's wiring and lag are in jetstream/archiver.py.

A message the store refuses for good (:class:`core.ports.Refused`: a NUL in its text for
Postgres, say) is parked in the dead letters and the rest of its batch written. Why: the
archiver used to retry such a batch forever, every 5 s, and no later message of anyone reached
history (issue 13). The store decides what is "for good"; anything else it raises is retried
as before, however long it takes, because parking a message over an outage would empty history
into the dead letters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec
from tenacity import AsyncRetrying, retry_if_not_exception_type, wait_exponential
from tenacity.wait import wait_base

from core import metrics
from core.identifiers import names_group
from core.model import ChatMessage
from core.ports import DeadLetters, HistoryStore, InboxCopy, Refused

log = logging.getLogger(__name__)

_decode = msgspec.json.Decoder(ChatMessage).decode


def to_archive(copy: InboxCopy) -> ChatMessage | None:
    """The message to store for this inbox copy, or None for the other copies: of a 1:1
    message the recipient's copy is kept, of a group entry the sender's (every member has
    one; the sender always does)."""
    message = _decode(copy.data)
    keep = message.sender if names_group(message.conv) else message.to
    return message if copy.user == keep else None


class Archiver:
    """Implements ``BatchHandler[InboxCopy]``."""

    def __init__(
        self,
        store: HistoryStore,
        dead: DeadLetters,
        *,
        retry_wait: wait_base = wait_exponential(multiplier=0.1, max=5),  # noqa: B008
    ) -> None:
        """``retry_wait``: between attempts at a write that failed for now (0.1 s doubling
        to 5 s: a store back within seconds is used at once, one down for long is asked
        every 5 s)."""
        self._store = store
        self._dead = dead
        self._retry_wait = retry_wait

    async def handle(self, batch: Sequence[InboxCopy]) -> None:
        kept: list[tuple[ChatMessage, InboxCopy]] = []
        for copy in batch:
            try:
                message = to_archive(copy)
            except msgspec.DecodeError:
                # acknowledged with the batch: delivering it again would never decode it
                log.error("undecodable inbox message dropped", extra={"user": copy.user})
                continue
            if message is not None:
                kept.append((message, copy))
        if not kept:
            return
        refused = await self._archive(kept)
        # Parked before the runner acknowledges the batch: if parking fails the batch comes
        # back, is written again (idempotent) and parked again (de-duplicated by JetStream).
        for message, copy, error in refused:
            await self._dead.park(copy, message.id, error.reason)
            metrics.HISTORY_PARKED.inc()
            # the id and reason only: a message's text never goes to the logs
            log.error(
                "history refused a message; parked in the dead letters",
                extra={"message_id": message.id, "reason": error.reason, "inbox_seq": copy.seq},
            )
        metrics.ARCHIVED.inc(len(kept) - len(refused))

    async def _archive(
        self, kept: list[tuple[ChatMessage, InboxCopy]]
    ) -> list[tuple[ChatMessage, InboxCopy, Refused]]:
        """Write every message; return those the store refused for good."""
        try:
            await self._write([message for message, _ in kept])
            return []
        except Refused as error:
            if len(kept) == 1:
                return [(*kept[0], error)]
        # Which one(s)? A Postgres batch is one statement and cannot say: write them one by
        # one. Refusals are rare (issue 13 saw one), so a slow batch now and then is fine.
        refused: list[tuple[ChatMessage, InboxCopy, Refused]] = []
        for message, copy in kept:
            try:
                await self._write([message])
            except Refused as error:
                refused.append((message, copy, error))
        return refused

    async def _write(self, messages: list[ChatMessage]) -> None:
        # A store that is down holds the archiver here, retrying, while the inbox keeps the
        # messages (the lag grows and shows it); it resumes when the store answers. Retrying
        # here rather than failing the batch: a redelivery would fetch and decode it again
        # for nothing, and the supervisor's restarts are for the consumer, not the store.
        # Refused is not retried: it is raised to the caller, which parks the message.
        async for attempt in AsyncRetrying(
            wait=self._retry_wait,
            retry=retry_if_not_exception_type(Refused),
            before_sleep=lambda state: log.warning(
                "history write failed; retrying", extra={"error": repr(state.outcome)}
            ),
        ):
            with attempt:
                await self._store.write(messages)
