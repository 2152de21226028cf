"""Archiving: every inbox message into the history store, once (the archiver's handler).

Each message sits in several inboxes (a 1:1 in both participants', a group's in every
member's); one copy is written and the others are passed over. History writes are idempotent,
so a batch delivered again after a crash (the runner acknowledges only after :meth:`handle`
returned) is simply written again: kill an archiver at any moment and history still holds each
message exactly once. The consumer runner and its restarts are jetstream/consumer.py's and the
supervisor's; the archiver's wiring and lag are in jetstream/archiver.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import msgspec
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from core import metrics
from core.identifiers import names_group
from core.model import ChatMessage
from core.ports import HistoryStore, InboxCopy

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

    def __init__(self, store: HistoryStore) -> None:
        self._store = store

    async def handle(self, batch: Sequence[InboxCopy]) -> None:
        messages: list[ChatMessage] = []
        for copy in batch:
            try:
                message = to_archive(copy)
            except msgspec.DecodeError:
                # acknowledged with the batch: delivering it again would never decode it
                log.error("undecodable inbox message dropped", extra={"user": copy.user})
                continue
            if message is not None:
                messages.append(message)
        if messages:
            await self._write(messages)
        metrics.ARCHIVED.inc(len(messages))

    async def _write(self, messages: list[ChatMessage]) -> None:
        # A store that is down holds the archiver here, retrying, while the inbox keeps the
        # messages (the lag grows and shows it); it resumes when the store answers. Retrying
        # here rather than failing the batch: a redelivery would fetch and decode it again
        # for nothing, and the supervisor's restarts are for the consumer, not the store.
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.1, max=5),
            retry=retry_if_exception_type(Exception),
            before_sleep=lambda state: log.warning(
                "history write failed; retrying", extra={"error": repr(state.outcome)}
            ),
        ):
            with attempt:
                await self._store.write(messages)
