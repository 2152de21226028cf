"""The archiver's handler: one copy of each message into history, before it returns; a message
the store refuses for good is parked and the rest written, a store that fails for now is
retried."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest
from fakes import MemoryHistory
from tenacity import wait_none

from core import metrics
from core.archive import Archiver
from core.model import ChatMessage, dm_conversation, group_conversation
from core.ports import InboxCopy, Refused


def message(n: int, sender: str, to: str, conv: str) -> ChatMessage:
    return ChatMessage(f"{n:024x}", conv, sender, "d", to, f"m{n}", n)


class Parked:
    """Dead letters in memory."""

    def __init__(self, fail: int = 0) -> None:
        self.entries: list[tuple[InboxCopy, str, str]] = []
        self.fail = fail

    async def park(self, copy: InboxCopy, message_id: str, reason: str) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("JetStream did not answer")
        self.entries.append((copy, message_id, reason))


class Refusing(MemoryHistory):
    """Refuses every batch holding a message whose text contains a NUL, as Postgres does
    (naming none: a batch is one statement); fails ``flaky`` writes first, for now."""

    def __init__(self, flaky: int = 0) -> None:
        super().__init__()
        self.flaky = flaky
        self.writes = 0

    async def write(self, messages: Sequence[ChatMessage]) -> None:
        self.writes += 1
        if self.flaky:
            self.flaky -= 1
            raise ConnectionError("connection lost")
        if any("\0" in m.text for m in messages):
            one = messages[0].id if len(messages) == 1 else ""
            raise Refused(one, "DataError: PostgreSQL text fields cannot contain NUL (0x00) bytes")
        await super().write(messages)


def dm_copies(n: int, text: str = "") -> list[InboxCopy]:
    m = message(n, "alice", "bob", dm_conversation("alice", "bob"))
    if text:
        m = msgspec.structs.replace(m, text=text)
    data = msgspec.json.encode(m)
    return [InboxCopy("bob", data, 2 * n), InboxCopy("alice", data, 2 * n + 1)]


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
    await Archiver(store, Parked()).handle(copies)
    assert store.messages == {(dm.conv, dm.id): dm, (group.conv, group.id): group}


async def test_a_refused_message_is_parked_and_the_rest_of_its_batch_written(caplog):
    store, parked = Refusing(), Parked()
    batch = [c for n in range(1, 6) for c in dm_copies(n, "a\0b" if n == 3 else "")]
    before = metrics.HISTORY_PARKED._value.get()
    archived = metrics.ARCHIVED._value.get()
    await Archiver(store, parked).handle(batch)
    assert sorted(i for _, i in store.messages) == [f"{n:024x}" for n in (1, 2, 4, 5)]
    [(copy, message_id, reason)] = parked.entries
    assert (copy.user, copy.seq, message_id) == ("bob", 6, f"{3:024x}")
    assert copy.data == batch[4].data  # the inbox bytes, as stored
    assert reason.startswith("DataError: PostgreSQL text fields cannot contain NUL")
    assert metrics.HISTORY_PARKED._value.get() == before + 1
    assert metrics.ARCHIVED._value.get() == archived + 4
    [record] = [r for r in caplog.records if "parked" in r.getMessage()]
    assert record.message_id == f"{3:024x}" and "a\0b" not in str(record.__dict__)


async def test_a_refused_message_alone_is_parked_without_a_second_write():
    store, parked = Refusing(), Parked()
    await Archiver(store, parked).handle(dm_copies(7, "\0"))
    assert store.writes == 1 and [i for _, i, _ in parked.entries] == [f"{7:024x}"]


async def test_a_failing_store_is_retried_not_parked():
    store, parked = Refusing(flaky=3), Parked()
    await Archiver(store, parked, retry_wait=wait_none()).handle(dm_copies(1) + dm_copies(2))
    assert store.writes == 4 and parked.entries == []
    assert len(store.messages) == 2


async def test_when_parking_fails_the_batch_fails_and_is_parked_again_on_redelivery():
    store, parked = Refusing(), Parked(fail=1)
    batch = dm_copies(1) + dm_copies(2, "x\0")
    with pytest.raises(ConnectionError):  # the runner naks it: nothing acknowledged
        await Archiver(store, parked).handle(batch)
    await Archiver(store, parked).handle(batch)  # delivered again
    assert [i for _, i, _ in parked.entries] == [f"{2:024x}"]
    assert list(store.messages) == [(dm_conversation("alice", "bob"), f"{1:024x}")]
