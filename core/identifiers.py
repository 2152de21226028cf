"""The shapes of everything a client sends: identifiers, names, passwords and texts.

Each shape is here once, as a regular expression for the core's checks and as a constrained
type (``Annotated[str, msgspec.Meta]``) for wire structs: frames (core/protocol.py) and HTTP
bodies are decoded into these types, and HTTP path and query parameters use the same patterns
(frontends/http/params.py), so a value that cannot be stored or used is refused where it
enters, naming its field, before anything is written or any subject or key is built. The
core's entry points check again the ids they build subjects and keys from (:func:`check`):
cheap, and a caller that skipped the wire types still cannot reach NATS with a bad id.

Why these characters: user ids and conversation ids appear verbatim in NATS subjects and KV
keys, where ``.`` separates tokens, ``*`` and ``>`` are wildcards and whitespace ends a
subject; device, group and message ids are hex. Postgres text cannot hold NUL, so no stored
string may contain one. Names (display, device, group) are shown on other users' screens:
no control character at all. Message texts keep tab, newline and carriage return, and refuse
the other C0 controls (NUL, and ESC and friends, which drive terminals). Passwords are only
ever hashed, never stored or shown, so any character is allowed; only their length is bounded.

Every pattern ends with ``$(?!\n)``: in Python's ``re`` (which msgspec and Litestar use) a
bare ``$`` also matches before a final newline, so ``"alice\n"`` would pass ``^[a-z]+$``; the
lookahead refuses it, and means nothing more in ECMAScript, the OpenAPI document's dialect.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from core.errors import ChatError, ErrorCode

_END = r"$(?!\n)"
_USER = r"[a-z0-9_]{3,32}"
_HEX16 = r"[0-9a-f]{16}"

USER_ID_PATTERN = rf"^{_USER}{_END}"
"""A user id is a handle chosen at sign-up: 3 to 32 of ``a-z 0-9 _``."""
DEVICE_ID_PATTERN = rf"^{_HEX16}{_END}"
"""A device id: 64 random bits in hex (:func:`core.ids.new_device_id`)."""
GROUP_ID_PATTERN = rf"^{_HEX16}{_END}"
"""A group id: 64 random bits in hex (``Groups.create``)."""
MESSAGE_ID_PATTERN = rf"^[0-9a-f]{{24}}{_END}"
"""A message id: 24 hex digits, time-sortable (:class:`core.ids.MessageIds`)."""
DM_CONVERSATION_PATTERN = rf"^dm\.{_USER}\.{_USER}{_END}"
"""A 1:1 conversation: ``dm.<a>.<b>`` with the two user ids sorted (:func:`dm_conversation`)."""
GROUP_CONVERSATION_PATTERN = rf"^group\.{_HEX16}{_END}"
"""A group conversation: ``group.<group id>``."""
CONVERSATION_PATTERN = rf"^(?:dm\.{_USER}\.{_USER}|group\.{_HEX16}){_END}"
"""Either kind of conversation id (a frame's or a path's ``conv``)."""
RECIPIENT_PATTERN = rf"^(?:{_USER}|group\.{_HEX16}){_END}"
"""A send's ``to``: a user id, or a group's conversation id."""
USER_LIST_PATTERN = rf"^[a-z0-9_,]*{_END}"
"""Comma-separated user ids (``GET /v1/presence?users=``); each is checked as a user id."""
MAX_CLIENT_ID_CHARS = 64
CLIENT_ID_PATTERN = rf"^[^\x00-\x1f\x7f]*{_END}"
"""A client id (the sender's idempotency key): 1 to 64 characters, none a control character
(it is stored with the message and shown back; it is hashed before it is used in a key)."""
NAME_PATTERN = rf"^[^\x00-\x1f\x7f-\x9f]*{_END}"
"""A display, device or group name: no control character (C0, DEL, C1); trimmed of
surrounding whitespace before it is stored, with a length limit per field."""
TEXT_PATTERN = rf"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*{_END}"
"""A message text: any character but NUL and the C0 controls other than tab, newline and
carriage return. Its length (1 to ``max_message_chars``) is the core's check, with its own
codes (``empty_message``, ``message_too_long``)."""
MAX_DISPLAY_NAME_CHARS = 64
MAX_DEVICE_NAME_CHARS = 64
MAX_GROUP_NAME_CHARS = 100
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024  # argon2 takes any length; this only bounds the work per request

USER_ID_RE = re.compile(USER_ID_PATTERN)
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
GROUP_ID_RE = re.compile(GROUP_ID_PATTERN)
MESSAGE_ID_RE = re.compile(MESSAGE_ID_PATTERN)
DM_CONVERSATION_RE = re.compile(DM_CONVERSATION_PATTERN)
GROUP_CONVERSATION_RE = re.compile(GROUP_CONVERSATION_PATTERN)
CONVERSATION_RE = re.compile(CONVERSATION_PATTERN)
CLIENT_ID_RE = re.compile(CLIENT_ID_PATTERN)
NAME_RE = re.compile(NAME_PATTERN)
TEXT_RE = re.compile(TEXT_PATTERN)

UserId = Annotated[str, msgspec.Meta(pattern=USER_ID_PATTERN)]
DeviceId = Annotated[str, msgspec.Meta(pattern=DEVICE_ID_PATTERN)]
GroupId = Annotated[str, msgspec.Meta(pattern=GROUP_ID_PATTERN)]
MessageId = Annotated[str, msgspec.Meta(pattern=MESSAGE_ID_PATTERN)]
DmConversationId = Annotated[str, msgspec.Meta(pattern=DM_CONVERSATION_PATTERN)]
GroupConversationId = Annotated[str, msgspec.Meta(pattern=GROUP_CONVERSATION_PATTERN)]
ConversationId = Annotated[str, msgspec.Meta(pattern=CONVERSATION_PATTERN)]
Recipient = Annotated[str, msgspec.Meta(pattern=RECIPIENT_PATTERN)]
ClientId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_CLIENT_ID_CHARS, pattern=CLIENT_ID_PATTERN)
]
Text = Annotated[str, msgspec.Meta(pattern=TEXT_PATTERN)]
DisplayName = Annotated[str, msgspec.Meta(max_length=MAX_DISPLAY_NAME_CHARS, pattern=NAME_PATTERN)]
DeviceName = Annotated[str, msgspec.Meta(max_length=MAX_DEVICE_NAME_CHARS, pattern=NAME_PATTERN)]
GroupName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_GROUP_NAME_CHARS, pattern=NAME_PATTERN)
]
Password = Annotated[
    str, msgspec.Meta(min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)
]


def check(value: str, regex: re.Pattern[str], field: str) -> str:
    """``value`` if it has the shape, else ChatError(INVALID_ARGUMENT) naming ``field``:
    the core's own check at its entry points, behind the wire types."""
    if regex.fullmatch(value) is None:
        raise ChatError(ErrorCode.INVALID_ARGUMENT, f"{field}: not a valid value: {value!r:.80}")
    return value


def check_conversation(conv: str) -> str:
    """A conversation id of either kind (its members are the caller's next check)."""
    return check(conv, CONVERSATION_RE, "conv")


def clean_name(name: str, field: str, max_chars: int, *, required: bool) -> str:
    """A name as it is stored: trimmed, without control characters, at most ``max_chars``
    (and not empty when ``required``); ChatError(INVALID_ARGUMENT) otherwise."""
    check(name, NAME_RE, field)
    name = name.strip()
    if len(name) > max_chars or (required and not name):
        least = 1 if required else 0
        raise ChatError(
            ErrorCode.INVALID_ARGUMENT, f"{field}: {least} to {max_chars} characters (trimmed)"
        )
    return name


def is_message_id(value: str) -> bool:
    return MESSAGE_ID_RE.fullmatch(value) is not None


def is_dm_conversation(conv: str) -> bool:
    """``conv`` has the full shape of a 1:1 conversation id."""
    return DM_CONVERSATION_RE.fullmatch(conv) is not None


def is_group_conversation(conv: str) -> bool:
    """``conv`` has the full shape of a group conversation id."""
    return GROUP_CONVERSATION_RE.fullmatch(conv) is not None


_DM = "dm."
_GROUP = "group."


def names_group(conv: str) -> bool:
    """``conv`` starts as a group conversation id does (its shape is not checked)."""
    return conv.startswith(_GROUP)


def dm_conversation(a: str, b: str) -> str:
    """The id of the 1:1 conversation between two users, the same from both sides."""
    lo, hi = sorted((a, b))
    return f"{_DM}{lo}.{hi}"


def group_conversation(group_id: str) -> str:
    return f"{_GROUP}{group_id}"


def group_id_of(conv: str) -> str:
    """The group id of ``group.<id>`` (a string without the prefix is returned unchanged)."""
    return conv.removeprefix(_GROUP)


def conversation_members(conv: str) -> tuple[str, ...]:
    """The members of a 1:1 conversation, from its id ``dm.<a>.<b>``; () for a group, whose
    members change over time and live in the group store."""
    kind, _, rest = conv.partition(".")
    if kind != "dm":
        return ()
    a, _, b = rest.partition(".")
    return (a, b) if a != b else (a,)
