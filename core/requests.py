"""A device's requests besides receiving: one handler each, shared by every transport.

A WebSocket device sends them as frames (the session looks the frame's type up in
:data:`HANDLERS`); a long-polling device, or any HTTP client, sends them to the HTTP routes
(frontends/http/routes.py), which build the same request structs and call the same handler. So
a rule (who may read a conversation, how many users a presence query takes, what a read mark
accepts) lives in one place and cannot differ between transports; only the way the answer is
carried differs (a frame with ``ref``, or an HTTP body), and that is the adapter's business.

Every handler checks the shape of the conversation id (and user ids) it is given before its
use case builds a subject or key from it (core/identifiers.py): the transports decode into
constrained types already, so this is the second line, for any caller that built a request
struct by hand.

Sends are here for single sends (``POST /v1/messages``); a session batches its device's
pipelined ``send`` frames through :meth:`core.messaging.Messaging.send_many`, which is what
:func:`send` calls too, so both apply the same checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from core.identifiers import USER_ID_RE, check, check_conversation
from core.messaging import SendRequest
from core.model import ChatMessage, ConversationSummary, Device, ReceiptState, Sent
from core.protocol import (
    Conversations,
    GetConversations,
    GetHistory,
    GetPresence,
    GetReceipts,
    HistoryPage,
    PresenceItem,
    PresenceList,
    Read,
    Receipts,
    Send,
    Typing,
    encode,
)

if TYPE_CHECKING:
    from core.chat import Chat

R = TypeVar("R")
T = TypeVar("T")


async def history(chat: Chat, device: Device, req: GetHistory) -> list[ChatMessage]:
    """A page of a conversation's history (members only; at most 100)."""
    return await chat.history.page(
        device.user_id,
        check_conversation(req.conv),
        before=req.before,
        after=req.after,
        around=req.around,
        limit=req.limit,
    )


async def conversations(
    chat: Chat, device: Device, req: GetConversations
) -> list[ConversationSummary]:
    """My conversations, most recent first, with read marks and unread counts."""
    return await chat.receipts.conversations(device.user_id, req.limit)


async def receipts(chat: Chat, device: Device, req: GetReceipts) -> list[ReceiptState]:
    """Every member's marks in a conversation (members only)."""
    return await chat.receipts.states(device.user_id, check_conversation(req.conv))


async def presence(chat: Chat, device: Device, req: GetPresence) -> list[PresenceItem]:
    """These users' presence as far as I may see it (at most 500)."""
    users = [check(user, USER_ID_RE, "users") for user in req.users]
    return await chat.presence.query(device.user_id, users)


async def read(chat: Chat, device: Device, req: Read) -> ReceiptState:
    """Mark a conversation read up to a message; members are told."""
    return await chat.receipts.read(device.user_id, check_conversation(req.conv), req.up_to)


async def typing(chat: Chat, device: Device, req: Typing) -> None:
    """I am typing, or stopped (members only; rate-limited per device)."""
    await chat.events.typing(device.user_id, device.id, check_conversation(req.conv), req.state)


async def send(chat: Chat, device: Device, req: Send) -> Sent:
    """One message, idempotent by ``client_id``."""
    return await chat.messaging.send(
        device.user_id, device.id, SendRequest(req.client_id, req.to, req.text)
    )


class Handler(Generic[R, T]):
    """A request's handler and how a session answers it in a frame (None: no answer; what
    it changes is told as events). ``beside``: it waits on a store, so the session runs it
    beside its frame loop (answers carry ``ref``); otherwise it runs in frame order."""

    __slots__ = ("answer", "beside", "run")

    def __init__(
        self,
        run: Callable[[Chat, Device, R], Awaitable[T]],
        answer: Callable[[R, T], str | None],
        *,
        beside: bool,
    ) -> None:
        self.run = run
        self.answer = answer
        self.beside = beside

    @staticmethod
    def ref(req: object) -> str | None:
        """The ``ref`` an error answer carries: the request's, if it has one."""
        ref = getattr(req, "ref", None)
        return ref if isinstance(ref, str) else None


def _no_answer(req: object, result: object) -> None:
    return None


HANDLERS: dict[type, Handler[Any, Any]] = {
    GetHistory: Handler(
        history,
        lambda req, messages: encode(HistoryPage(req.ref, req.conv, messages)),
        beside=True,
    ),
    GetConversations: Handler(
        conversations, lambda req, summaries: encode(Conversations(req.ref, summaries)), beside=True
    ),
    GetReceipts: Handler(
        receipts, lambda req, states: encode(Receipts(req.ref, req.conv, states)), beside=True
    ),
    GetPresence: Handler(
        presence, lambda req, items: encode(PresenceList(req.ref, items)), beside=True
    ),
    Read: Handler(read, _no_answer, beside=False),
    Typing: Handler(typing, _no_answer, beside=False),
}
"""Every request frame but the session's own (hello, ack, ping, send), by frame type."""
