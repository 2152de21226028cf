"""The shapes of jetchat's identifiers, and the small helpers that build and take them apart.

User ids and conversation ids appear verbatim in NATS subjects and KV keys, so they are kept
to characters that are valid (and readable) there. Each pattern is here once, as a regular
expression for the core's checks and as a constrained type (``Annotated[str, msgspec.Meta]``)
for wire structs and parameters.

This module only gathers what was checked before, in the places that checked it: it adds
no refusal (a frame's ``conv`` is still any string, refused or not by the code that reads
it). Tightening validation, so that frames, bodies and path parameters are decoded into
these types at the edge, is a separate step built on this module.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

USER_ID_PATTERN = r"^[a-z0-9_]{3,32}$"
"""A user id is a handle chosen at sign-up: 3 to 32 of ``a-z 0-9 _``."""
DEVICE_ID_PATTERN = r"^[0-9a-f]{16}$"
"""A device id: 64 random bits in hex (:func:`core.ids.new_device_id`)."""
GROUP_ID_PATTERN = r"^[0-9a-f]{16}$"
"""A group id: 64 random bits in hex (``Groups.create``)."""
MESSAGE_ID_PATTERN = r"^[0-9a-f]{24}$"
"""A message id: 24 hex digits, time-sortable (:class:`core.ids.MessageIds`)."""
DM_CONVERSATION_PATTERN = r"^dm\.[a-z0-9_]{3,32}\.[a-z0-9_]{3,32}$"
"""A 1:1 conversation: ``dm.<a>.<b>`` with the two user ids sorted (:func:`dm_conversation`)."""
GROUP_CONVERSATION_PATTERN = r"^group\.[0-9a-f]{16}$"
"""A group conversation: ``group.<group id>``."""
MAX_CLIENT_ID_CHARS = 64
"""A client id (the sender's idempotency key) is any string of 1 to 64 characters."""

USER_ID_RE = re.compile(USER_ID_PATTERN)
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
GROUP_ID_RE = re.compile(GROUP_ID_PATTERN)
MESSAGE_ID_RE = re.compile(MESSAGE_ID_PATTERN)
DM_CONVERSATION_RE = re.compile(DM_CONVERSATION_PATTERN)
GROUP_CONVERSATION_RE = re.compile(GROUP_CONVERSATION_PATTERN)

UserId = Annotated[str, msgspec.Meta(pattern=USER_ID_PATTERN)]
DeviceId = Annotated[str, msgspec.Meta(pattern=DEVICE_ID_PATTERN)]
GroupId = Annotated[str, msgspec.Meta(pattern=GROUP_ID_PATTERN)]
MessageId = Annotated[str, msgspec.Meta(pattern=MESSAGE_ID_PATTERN)]
DmConversationId = Annotated[str, msgspec.Meta(pattern=DM_CONVERSATION_PATTERN)]
GroupConversationId = Annotated[str, msgspec.Meta(pattern=GROUP_CONVERSATION_PATTERN)]
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CLIENT_ID_CHARS)]

_DM = "dm."
_GROUP = "group."


def is_user_id(value: str) -> bool:
    return USER_ID_RE.fullmatch(value) is not None


def is_message_id(value: str) -> bool:
    return MESSAGE_ID_RE.fullmatch(value) is not None


def is_dm_conversation(conv: str) -> bool:
    """``conv`` has the full shape of a 1:1 conversation id."""
    return DM_CONVERSATION_RE.fullmatch(conv) is not None


def is_group_conversation(conv: str) -> bool:
    """``conv`` has the full shape of a group conversation id."""
    return GROUP_CONVERSATION_RE.fullmatch(conv) is not None


def names_dm(conv: str) -> bool:
    """``conv`` starts as a 1:1 conversation id does (its shape is not checked)."""
    return conv.startswith(_DM)


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
