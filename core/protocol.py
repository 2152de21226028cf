"""The client protocol: every frame in both directions, decoded and encoded once, here.

Frames are JSON objects tagged by ``"type"``; docs/protocol.md documents each one. The same
frames travel over WebSocket (one per text frame) and in long-poll answers.

A client frame's ids, texts and names are constrained types of core/identifiers.py, so the
decoder refuses a value that could not be stored or used in a subject or key, naming its field:
``invalid_argument`` (a value of the right type out of its shape), where a value of the wrong
type is ``malformed``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from itertools import accumulate

import msgspec

from core.errors import ChatError, ErrorCode
from core.identifiers import ClientId, ConversationId, MessageId, Recipient, Text, UserId
from core.model import ChatMessage, ConversationSummary, ReceiptState
from core.ports import InboxEntry

MAX_PAGE = 100
"""Messages per history page at most (the protocol's cap on ``limit``): one page is one
response frame, and 100 messages of 100,000 characters already make 40 MB; clients page on."""
MAX_CONVERSATIONS = 500


FIRST_ID = "0" * 24
"""Sorts before every message id: ``after=FIRST_ID`` pages from the very beginning."""


PROTOCOL_VERSION = 2
"""The newest protocol version the server speaks (sent in ``welcome``). A client says in
``hello`` (or the long poll's ``protocol`` parameter) which version it speaks, 1 if it says
nothing: version 2 adds the ``msgs`` frame, several inbox messages in one frame."""


# --- client -> server --------------------------------------------------------------------


class Hello(msgspec.Struct, tag="hello", tag_field="type", forbid_unknown_fields=True):
    """Start receiving: replay the inbox after ``cursor`` (null: the server's stored cursor for
    this device, 0 if none), then live messages. ``protocol``: the version the client speaks
    (at most the ``welcome``'s: an older server refuses the field)."""

    cursor: int | None = None
    protocol: int = 1


class Send(msgspec.Struct, tag="send", tag_field="type", forbid_unknown_fields=True):
    """Send ``text`` to user ``to``. ``client_id`` makes the send idempotent."""

    client_id: ClientId
    to: Recipient
    text: Text


class Ack(msgspec.Struct, tag="ack", tag_field="type", forbid_unknown_fields=True):
    """The device processed every inbox message up to ``seq``."""

    seq: int


class Ping(msgspec.Struct, tag="ping", tag_field="type", forbid_unknown_fields=True):
    pass


class GetHistory(msgspec.Struct, tag="history", tag_field="type", forbid_unknown_fields=True):
    """A page of a conversation (at most one of before/after/around; none: the newest)."""

    ref: str
    conv: ConversationId
    before: MessageId | None = None
    after: MessageId | None = None
    around: MessageId | None = None
    limit: int = 50


class GetConversations(
    msgspec.Struct, tag="conversations", tag_field="type", forbid_unknown_fields=True
):
    """My conversations, most recent first."""

    ref: str
    limit: int = 500


class Typing(msgspec.Struct, tag="typing", tag_field="type", forbid_unknown_fields=True):
    """I am typing in ``conv`` ("start", repeated every few seconds) or stopped ("stop")."""

    conv: ConversationId
    state: str


class Read(msgspec.Struct, tag="read", tag_field="type", forbid_unknown_fields=True):
    """I have read ``conv`` up to message ``up_to`` (marks every device of mine, tells the
    members)."""

    conv: ConversationId
    up_to: MessageId


class GetReceipts(msgspec.Struct, tag="receipts", tag_field="type", forbid_unknown_fields=True):
    """Every member's delivered and read marks in ``conv``."""

    ref: str
    conv: ConversationId


class GetPresence(msgspec.Struct, tag="presence", tag_field="type", forbid_unknown_fields=True):
    """The presence of these users (at most 500), as far as I may see it."""

    ref: str
    users: list[UserId]


ClientFrame = (
    Hello
    | Send
    | Ack
    | Ping
    | GetHistory
    | GetConversations
    | Typing
    | Read
    | GetReceipts
    | GetPresence
)

_client_decoder: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)

MAX_JSON_DEPTH = 32
"""Nesting of arrays and objects a frame or an HTTP body may have. No frame or body of the
protocol nests deeper than 3; msgspec recurses once per level (and raised RecursionError near
1,000 levels, from a 2 KB frame under an unknown field), so refuse deep input before decoding."""

_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_STRINGS_B = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def check_json_depth(data: str | bytes) -> None:
    """Raise ChatError(MALFORMED) if ``data`` nests arrays or objects deeper than
    :data:`MAX_JSON_DEPTH`, before any decoder recurses into it.

    Cost: a frame holding at most MAX_JSON_DEPTH opening brackets cannot be deeper, and two
    ``count`` calls say so: 0.35 us for a typical 270-byte ``send`` frame (python -m timeit,
    CPython 3.11, 2 cores), next to 0.27 us for msgspec's decode of it. Only a frame with more
    brackets is scanned: strings removed by one regex (brackets in a message's text do not
    count), then a running sum over the brackets left, in C but for one dict lookup per bracket
    (a 400 KB frame of ``[],``: 23 ms, the worst a frame within the cap can cost). Strings are
    paired left to right as JSON pairs them, so up to the first syntax error (where the decoder
    stops) the depth is exact; beyond it, unterminated strings may count deeper: malformed
    either way."""
    if isinstance(data, bytes):
        opening = data.count(b"[") + data.count(b"{")
    else:
        opening = data.count("[") + data.count("{")
    if opening <= MAX_JSON_DEPTH:
        return
    if isinstance(data, bytes):
        text = _STRINGS_B.sub(b"", data).decode("latin-1")
    else:
        text = _STRINGS.sub("", data)
    steps = map(_STEP.__getitem__, _BRACKETS.findall(text))
    if max(accumulate(steps), default=0) > MAX_JSON_DEPTH:
        raise ChatError(
            ErrorCode.MALFORMED, f"JSON nested deeper than {MAX_JSON_DEPTH} arrays or objects"
        )


def decode_client_frame(data: str | bytes) -> ClientFrame:
    """Decode one client frame or raise ChatError(MALFORMED | UNKNOWN_TYPE)."""
    check_json_depth(data)
    try:
        return _client_decoder.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if text.endswith("at `$.type`") and text.startswith("Invalid value"):
            raise ChatError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type: {text}") from None
        raise ChatError(validation_code(text), text) from None
    except msgspec.DecodeError as exc:
        raise ChatError(ErrorCode.MALFORMED, f"not a JSON object: {exc}") from None


_CONSTRAINT = re.compile(r"Expected `[^`]+` (?!,)")


def validation_code(message: str) -> ErrorCode:
    """The code of msgspec's validation message: a value of the right type that breaks its
    field's constraint ("Expected `str` matching regex ..." or "of length <= 64") is
    ``invalid_argument``; anything else (a wrong type, a missing field) is ``malformed``."""
    return ErrorCode.INVALID_ARGUMENT if _CONSTRAINT.match(message) else ErrorCode.MALFORMED


# --- server -> client --------------------------------------------------------------------


class Welcome(msgspec.Struct, tag="welcome", tag_field="type"):
    user: str
    device: str
    protocol: int
    max_message_chars: int


class CaughtUp(msgspec.Struct, tag="caught_up", tag_field="type"):
    """Every inbox message up to ``seq`` has been sent; what follows is live."""

    seq: int


class ResyncNeeded(msgspec.Struct, tag="resync_needed", tag_field="type"):
    """The inbox no longer holds everything after ``cursor`` (retention removed messages from
    ``first_seq`` backwards, or the cursor is beyond the inbox). Nothing was replayed; the client
    fetches history and says hello again."""

    cursor: int
    first_seq: int
    last_seq: int


class SentFrame(msgspec.Struct, tag="sent", tag_field="type"):
    """JetStream durably holds the message in every recipient's inbox."""

    client_id: str
    id: str
    conv: str
    ts: int


class ErrorFrame(msgspec.Struct, tag="error", tag_field="type", omit_defaults=True):
    """A request failed. ``ref`` is the ``client_id`` of the send it answers, if any."""

    code: str
    message: str
    ref: str | None = None
    retry_after_ms: int | None = None
    """``rate_limited``: retrying before this many ms will be refused again."""


class Pong(msgspec.Struct, tag="pong", tag_field="type"):
    pass


class HistoryPage(msgspec.Struct, tag="history", tag_field="type"):
    """Answer to ``history``: messages in id order."""

    ref: str
    conv: str
    messages: list[ChatMessage]


class Conversations(msgspec.Struct, tag="conversations", tag_field="type"):
    ref: str
    conversations: list[ConversationSummary]


class TypingEvent(msgspec.Struct, tag="typing", tag_field="type"):
    """``user`` is typing in ``conv`` (show it for ``expires_in_ms`` unless refreshed) or
    stopped. Ephemeral: never stored, never replayed."""

    conv: str
    user: str
    state: str
    expires_in_ms: int


class ReceiptEvent(msgspec.Struct, tag="receipt", tag_field="type"):
    """``user``'s marks in ``conv`` moved: delivered (a device of theirs has every message up
    to that id) and read (they read up to that id). Live only; the current state is always
    available with a ``receipts`` request."""

    conv: str
    user: str
    delivered: str
    read: str


class Receipts(msgspec.Struct, tag="receipts", tag_field="type"):
    """Answer to ``receipts``: every member's marks (in a group: counted per member)."""

    ref: str
    conv: str
    states: list[ReceiptState]


class PresenceEvent(msgspec.Struct, tag="presence", tag_field="type"):
    """``user`` came online or went offline (``last_seen``: ms, or null when hidden from
    you). Sent only on change, only for users whose presence you may see."""

    user: str
    online: bool
    last_seen: int | None


class PresenceItem(msgspec.Struct, frozen=True):
    """null/null: not visible to you (not a contact or group peer, or hidden)."""

    user: str
    online: bool | None
    last_seen: int | None


class PresenceList(msgspec.Struct, tag="presence_list", tag_field="type"):
    ref: str
    users: list[PresenceItem]


class MsgFrame(msgspec.Struct, tag="msg", tag_field="type"):
    """An inbox message; ``seq`` is the cursor to resume after it. The server builds it with
    :func:`encode_msg`; clients decode it with :data:`server_frame_decoder`."""

    seq: int
    message: ChatMessage


class MsgItem(msgspec.Struct, frozen=True):
    """One message of a ``msgs`` frame: what a ``msg`` frame carries, without the tag."""

    seq: int
    message: ChatMessage


class MsgsFrame(msgspec.Struct, tag="msgs", tag_field="type"):
    """Several inbox messages in order (protocol 2): the same as a ``msg`` frame for each
    item. The server builds it with :func:`msg_frames`."""

    items: list[MsgItem]


ServerFrame = (
    Welcome
    | CaughtUp
    | ResyncNeeded
    | SentFrame
    | ErrorFrame
    | Pong
    | HistoryPage
    | Conversations
    | TypingEvent
    | ReceiptEvent
    | Receipts
    | PresenceEvent
    | PresenceList
)
PollFrame = MsgFrame | MsgsFrame | ResyncNeeded | ReceiptEvent | TypingEvent | PresenceEvent
"""The server frames a long-poll answer carries (``msgs`` only for protocol 2)."""

server_frame_decoder = msgspec.json.Decoder(ServerFrame | MsgFrame | MsgsFrame)

_encoder = msgspec.json.Encoder()


def encode(frame: ServerFrame) -> str:
    return _encoder.encode(frame).decode()


def encode_msg(seq: int, message: bytes) -> str:
    """``{"type":"msg","seq":N,"message":{...}}``, splicing the stored JSON in without a
    decode/encode round trip: the stored bytes are already a JSON ChatMessage."""
    return f'{{"type":"msg","seq":{seq},"message":{message.decode()}}}'


_MSGS_ENVELOPE = len('{"type":"msgs","items":[]}')
_ITEM_ENVELOPE = len('{"seq":,"message":},') + 20  # 20: the most digits a seq can have


def msg_frames(entries: Sequence[InboxEntry], protocol: int, max_bytes: int) -> Iterator[str]:
    """The frames that deliver ``entries`` in order: a ``msg`` frame each for protocol 1;
    for protocol 2, ``msgs`` frames of consecutive entries, each at most ``max_bytes`` long
    (a message too large to share a frame goes alone, as a ``msg`` frame). Spliced from the
    stored JSON like :func:`encode_msg`."""
    if protocol < 2:
        for entry in entries:
            yield encode_msg(entry.seq, entry.data)
        return
    group: list[InboxEntry] = []
    size = _MSGS_ENVELOPE
    for entry in entries:
        item = len(entry.data) + _ITEM_ENVELOPE
        if group and size + item > max_bytes:
            yield _frame_of(group)
            group, size = [], _MSGS_ENVELOPE
        group.append(entry)
        size += item
    if group:
        yield _frame_of(group)


def _frame_of(group: list[InboxEntry]) -> str:
    if len(group) == 1:
        return encode_msg(group[0].seq, group[0].data)
    items = b",".join([b'{"seq":%d,"message":%b}' % (e.seq, e.data) for e in group])
    return f'{{"type":"msgs","items":[{items.decode()}]}}'


def error_frame(err: ChatError, ref: str | None = None) -> str:
    return encode(
        ErrorFrame(
            code=err.code.value, message=err.message, ref=ref, retry_after_ms=err.retry_after_ms
        )
    )
