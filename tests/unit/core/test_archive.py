"""The archiver's handler: one copy of each message into history, before it returns."""

from __future__ import annotations

import msgspec
from fakes import MemoryHistory

from core.archive import Archiver
from core.model import ChatMessage, dm_conversation, group_conversation
from core.ports import InboxCopy


def message(n: int, sender: str, to: str, conv: str) -> ChatMessage:
    return ChatMessage(f"{n:024x}", conv, sender, "d", to, f"m{n}", n)


async def test_one_copy_per_message_is_written_and_undecodable_ones_are_dropped():
    store = MemoryHistory()
    dm = message(1, "alice", "bob", dm_conversation("alice", "bob"))
    group = message(2, "alice", "", group_conversation("0" * 16))
    copies = [
        InboxCopy("bob", msgspec.json.encode(dm)),  # the recipient's: kept
        InboxCopy("alice", msgspec.json.encode(dm)),
        InboxCopy("alice", msgspec.json.encode(group)),  # the group sender's: kept
        InboxCopy("carol", msgspec.json.encode(group)),
        InboxCopy("bob", b"not json"),  # logged and passed over, not redelivered forever
    ]
    await Archiver(store).handle(copies)
    assert store.messages == {(dm.conv, dm.id): dm, (group.conv, group.id): group}
