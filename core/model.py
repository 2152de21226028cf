"""Records the core stores and passes around. Wire frames live in :mod:`core.protocol`."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

# re-exported: the conversation ids' helpers used to live here
from core.identifiers import conversation_members as conversation_members
from core.identifiers import dm_conversation as dm_conversation
from core.identifiers import group_conversation as group_conversation


class User(msgspec.Struct, frozen=True):
    """An account. ``id`` is the handle chosen at sign-up: lowercase, immutable, and used as is
    in NATS subjects (``chat.inbox.<id>``) so operators can read them."""

    id: str
    display_name: str
    password_hash: str
    created_at: int  # ms since the epoch


class Device(msgspec.Struct, frozen=True):
    """One logged-in device. Its bearer token is stored only as a SHA-256 hash."""

    id: str
    user_id: str
    name: str
    token_hash: bytes
    created_at: int  # ms since the epoch
    expires_at: int  # ms since the epoch
    revoked_at: int | None = None


class ChatMessage(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """A text message as stored in JetStream and delivered to devices.

    ``id`` is assigned by the server, unique and time-sortable; a conversation is shown in the
    order of its message ids on every device (see docs/architecture.md, "Order").
    """

    id: str
    conv: str  # "dm.<a>.<b>" with a < b
    sender: str
    sender_device: str
    to: str
    text: str
    ts: int  # ms since the epoch, assigned with the id
    client_id: str = ""
    event: str = ""
    """Group timeline events: "created", "added", "removed", "left", "renamed", "promoted"
    (``text`` then says it in words, ``target`` is the user it concerns). Empty: a message."""
    target: str = ""


class ConversationSummary(msgspec.Struct, frozen=True):
    """A conversation a user takes part in, with its newest archived message, how far the
    user has read it, and how many messages from others are unread (counted up to 100)."""

    conv: str
    last_id: str
    last_ts: int
    read_up_to: str = ""
    unread: int = 0


HISTORY_COLUMNS = "conv, id, sender, sender_device, recipient, body, ts, client_id, event, target"
"""The history stores' message columns, in the order :func:`message_from_row` reads them
(``recipient`` is ``to`` and ``body`` is ``text``: both words are reserved in SQL or CQL)."""


def message_from_row(row: Sequence[object]) -> ChatMessage:
    conv, id_, sender, device, to, body, ts, client_id, event, target = row
    return ChatMessage(
        id=str(id_),
        conv=str(conv),
        sender=str(sender),
        sender_device=str(device),
        to=str(to),
        text=str(body),
        ts=int(str(ts)),
        client_id=str(client_id or ""),
        event=str(event or ""),
        target=str(target or ""),
    )


def message_row(m: ChatMessage) -> tuple[object, ...]:
    """The values of :data:`HISTORY_COLUMNS` for a message."""
    return (
        m.conv,
        m.id,
        m.sender,
        m.sender_device,
        m.to,
        m.text,
        m.ts,
        m.client_id,
        m.event,
        m.target,
    )


class ReceiptState(msgspec.Struct, frozen=True):
    """How far one member got in a conversation: every message with an id up to
    ``delivered`` reached one of their devices, up to ``read`` they have read ("" : none)."""

    user: str
    delivered: str = ""
    read: str = ""


class Group(msgspec.Struct, frozen=True):
    id: str
    name: str
    created_by: str
    created_at: int  # ms since the epoch


class Member(msgspec.Struct, frozen=True):
    user_id: str
    role: str  # "admin" or "member"
    joined_id: str  # id of the timeline event that added them


class MembershipPeriod(msgspec.Struct, frozen=True):
    """A stretch of a group's timeline a user belonged to, by event ids (both included)."""

    joined_id: str
    left_id: str | None  # None: still a member


def id_time_ms(message_id: str) -> int:
    """The ms timestamp a message id carries (its first 12 hex digits, see core.ids)."""
    return int(message_id[:12], 16)


class SendRecord(msgspec.Struct, frozen=True):
    """What the idempotency store keeps per (sender, client message id).

    ``done`` turns true once every inbox copy is acknowledged by JetStream; a resend of a done
    record returns it and writes nothing. ``logged``: a group message already has its place
    (and final id) in the group's log; a resend only completes its copies."""

    id: str
    ts: int
    done: bool = False
    logged: bool = False


class Sent(msgspec.Struct, frozen=True):
    """The result of a send: JetStream durably holds the message in every inbox."""

    client_id: str
    id: str
    conv: str
    ts: int
