"""Delivered and read receipts, and unread counts.

A member's marks per conversation are state (a store shared by every process), moved forward
by acks (delivered) and ``read`` requests; each move is told live to the members concerned,
and the state can be fetched at any time, so a sender who was offline sees the current
state when it asks."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from core.errors import ChatError, ErrorCode
from core.events import Events
from core.history import FIRST_ID, MAX_PAGE, History
from core.identifiers import is_message_id
from core.model import ConversationSummary, ReceiptState
from core.ports import InboxLog, ReceiptStore
from core.protocol import ReceiptEvent


class Head(msgspec.Struct, frozen=True, gc=False):
    """The fields of a stored message that receipts need (the rest is not decoded)."""

    id: str = ""
    conv: str = ""
    sender: str = ""


decode_head = msgspec.json.Decoder(Head).decode


def delivered_marks(user: str, heads: Iterable[Head]) -> dict[str, tuple[str, set[str]]]:
    """Per conversation, the greatest id of the messages others sent, and who sent them."""
    out: dict[str, tuple[str, set[str]]] = {}
    for head in heads:
        if head.sender == user or not head.conv:
            continue
        up_to, senders = out.get(head.conv, ("", set()))
        senders.add(head.sender)
        out[head.conv] = (max(up_to, head.id), senders)
    return out


class Receipts:
    def __init__(
        self, store: ReceiptStore, events: Events, inbox: InboxLog, history: History
    ) -> None:
        self._store = store
        self._events = events
        self._inbox = inbox
        self._history = history

    async def delivered(self, user: str, acked: dict[str, tuple[str, set[str]]]) -> None:
        """A device of ``user`` acknowledged messages: per conversation, the greatest id and
        who sent them. The senders (and the user's other devices) are told."""
        for conv, (up_to, senders) in acked.items():
            state = await self._store.advance(conv, user, up_to, None)
            if state is not None:
                await self._tell(senders | {user}, conv, state)

    async def read(self, user: str, conv: str, up_to: str) -> ReceiptState:
        """Mark ``conv`` read up to ``up_to`` (which also means delivered)."""
        if not is_message_id(up_to):
            raise ChatError(ErrorCode.INVALID_ARGUMENT, f"not a message id: {up_to!r}")
        members = await self._events.members(user, conv, fresh=True)
        state = await self._store.advance(conv, user, up_to, up_to)
        if state is None:
            return await self._store.get(conv, user)
        await self._tell(members, conv, state)
        return state

    async def states(self, user: str, conv: str) -> list[ReceiptState]:
        await self._events.members(user, conv, fresh=True)
        return await self._store.all(conv)

    async def conversations(self, user: str, limit: int) -> list[ConversationSummary]:
        """The user's conversations with how far they read and how many are unread."""
        out = []
        for summary in await self._history.conversations(user, limit):
            mark = (await self._store.get(summary.conv, user)).read
            newer = await self._history.page(
                user, summary.conv, after=mark or FIRST_ID, limit=MAX_PAGE
            )
            unread = sum(1 for m in newer if m.sender != user and not m.event)
            out.append(msgspec.structs.replace(summary, read_up_to=mark, unread=unread))
        return out

    async def _tell(self, users: Iterable[str], conv: str, state: ReceiptState) -> None:
        event = ReceiptEvent(conv, state.user, state.delivered, state.read)
        await self._inbox.notify(sorted(users), msgspec.json.encode(event))
