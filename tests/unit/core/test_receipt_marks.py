"""Receipts (core/receipts.py) against in-memory stores: marks that only move forward, who is
told of a move, every member's marks, unread counts, and the heads acks are read from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import pytest
from fakes import EventInbox, FakeClock, MemoryGroups, MemoryHistory, MemoryReceipts

from core.errors import ChatError, ErrorCode
from core.events import Events
from core.history import MAX_PAGE, History
from core.model import (
    ChatMessage,
    Group,
    Member,
    ReceiptState,
    dm_conversation,
    group_conversation,
)
from core.protocol import ReceiptEvent
from core.receipts import Head, Receipts, decode_head, delivered_marks

T0 = 1_790_000_000_000
GID = "0123456789abcdef"
GROUP = group_conversation(GID)
DM = dm_conversation("alice", "bob")


def mid(n: int) -> str:
    return f"{T0 + n:012x}0000abcdef01"


def message(conv: str, n: int, sender: str, event: str = "") -> ChatMessage:
    return ChatMessage(mid(n), conv, sender, "dev", conv, f"#{n}", T0 + n, event=event)


@dataclass
class World:
    inbox: EventInbox
    store: MemoryReceipts
    groups: MemoryGroups
    history: MemoryHistory
    receipts: Receipts

    def told(self, user: str) -> list[ReceiptEvent]:
        return [msgspec.json.decode(e, type=ReceiptEvent) for e in self.inbox.events_of(user)]


async def world(group_members: tuple[str, ...] = ("alice", "bob", "carol")) -> World:
    clock = FakeClock()
    inbox, groups, history = EventInbox(clock), MemoryGroups(), MemoryHistory()
    await groups.create(
        Group(GID, "trip", "alice", T0), [Member(u, "member", mid(0)) for u in group_members]
    )
    events = Events(inbox, groups, clock)
    store = MemoryReceipts()
    return World(
        inbox, store, groups, history, Receipts(store, events, inbox, History(history, groups))
    )


async def refused(code: ErrorCode, action: Awaitable[object]) -> None:
    with pytest.raises(ChatError) as info:
        await action
    assert info.value.code == code, info.value


# --- marks -------------------------------------------------------------------------------------


async def test_read_moves_both_marks_forward_and_never_back():
    w = await world()
    assert await w.receipts.read("bob", DM, mid(5)) == ReceiptState("bob", mid(5), mid(5))
    assert await w.receipts.read("bob", DM, mid(3)) == ReceiptState("bob", mid(5), mid(5))
    await w.receipts.delivered("bob", {DM: (mid(4), {"alice"})})
    assert await w.store.get(DM, "bob") == ReceiptState("bob", mid(5), mid(5))
    await w.receipts.delivered("bob", {DM: (mid(9), {"alice"})})
    assert await w.store.get(DM, "bob") == ReceiptState("bob", mid(9), mid(5))
    assert await w.receipts.read("bob", DM, mid(7)) == ReceiptState("bob", mid(9), mid(7))
    # only the moves were told: 5/5, then delivered 9, then read 7
    assert [(e.delivered, e.read) for e in w.told("alice")] == [
        (mid(5), mid(5)),
        (mid(9), mid(5)),
        (mid(9), mid(7)),
    ]


async def test_a_read_is_the_users_whatever_the_device_and_all_their_devices_are_told():
    # marks are per member, not per device: a read from the phone is the laptop's too, and the
    # user's own event subject (every device of theirs) hears of it with the other member
    w = await world()
    await w.receipts.read("bob", DM, mid(5))
    told = ReceiptEvent(DM, "bob", mid(5), mid(5))
    assert w.told("bob") == [told] and w.told("alice") == [told]
    assert await w.receipts.states("alice", DM) == [ReceiptState("bob", mid(5), mid(5))]


async def test_a_group_read_is_told_to_every_member_now():
    w = await world(("alice", "bob", "carol", "dave"))
    await w.receipts.read("carol", GROUP, mid(3))
    told = ReceiptEvent(GROUP, "carol", mid(3), mid(3))
    for user in ("alice", "bob", "carol", "dave"):
        assert w.told(user) == [told]
    assert w.told("erin") == []


async def test_delivered_is_told_to_the_senders_and_the_users_devices_only():
    w = await world(("alice", "bob", "carol", "dave"))
    await w.receipts.delivered(
        "bob", {DM: (mid(4), {"alice"}), GROUP: (mid(7), {"alice", "carol"})}
    )
    assert w.told("alice") == [
        ReceiptEvent(DM, "bob", mid(4), ""),
        ReceiptEvent(GROUP, "bob", mid(7), ""),
    ]
    assert w.told("carol") == [ReceiptEvent(GROUP, "bob", mid(7), "")]
    assert len(w.told("bob")) == 2 and w.told("dave") == []
    await w.receipts.delivered("bob", {GROUP: (mid(6), {"carol"})})  # behind: nothing moves
    assert len(w.inbox.events) == 5


async def test_read_refuses_strangers_and_ids_that_are_no_message_id():
    w = await world()
    await refused(ErrorCode.FORBIDDEN, w.receipts.read("mallory", DM, mid(1)))
    await refused(ErrorCode.FORBIDDEN, w.receipts.read("erin", GROUP, mid(1)))
    await refused(ErrorCode.INVALID_ARGUMENT, w.receipts.read("bob", DM, "latest"))
    await refused(ErrorCode.INVALID_ARGUMENT, w.receipts.read("bob", DM, mid(1).upper()))
    await refused(ErrorCode.FORBIDDEN, w.receipts.states("erin", GROUP))
    assert w.store.marks == {} and w.inbox.events == []


async def test_group_marks_are_counted_per_member():
    w = await world()
    await w.receipts.read("alice", GROUP, mid(5))
    await w.receipts.delivered("bob", {GROUP: (mid(7), {"alice"})})
    await w.receipts.read("bob", DM, mid(9))  # another conversation: not among the group's
    assert await w.receipts.states("carol", GROUP) == [
        ReceiptState("alice", mid(5), mid(5)),
        ReceiptState("bob", mid(7), ""),
    ]  # carol has no marks yet: absent


async def test_the_events_a_member_receives_keep_their_view_of_the_marks_current():
    # verify_action: fetch the marks, act, apply the receipt events received, and the view
    # equals the marks fetched afresh (in a 1:1 the other member is always the sender told)
    w = await world()
    actions: list[Callable[[], Awaitable[object]]] = [
        lambda: w.receipts.delivered("bob", {DM: (mid(2), {"alice"})}),
        lambda: w.receipts.read("alice", DM, mid(3)),
        lambda: w.receipts.read("bob", DM, mid(1)),
        lambda: w.receipts.read("bob", DM, mid(2)),
        lambda: w.receipts.delivered("alice", {DM: (mid(8), {"bob"})}),
        lambda: w.receipts.delivered("bob", {DM: (mid(1), {"alice"})}),
    ]
    for action in actions:
        views = {u: await w.receipts.states(u, DM) for u in ("alice", "bob")}
        seen = {u: len(w.told(u)) for u in views}
        await action()
        for user, view in views.items():
            marks = {s.user: s for s in view}
            for event in w.told(user)[seen[user] :]:
                marks[event.user] = ReceiptState(event.user, event.delivered, event.read)
            assert sorted(marks.values(), key=lambda s: s.user) == await w.receipts.states(user, DM)


# --- unread counts -----------------------------------------------------------------------------


async def test_unread_counts_the_others_messages_after_the_read_mark():
    w = await world()
    await w.history.write([message(DM, i, ("alice", "bob")[i % 2]) for i in range(10)])
    (before,) = await w.receipts.conversations("bob", 10)
    assert (before.conv, before.read_up_to, before.unread) == (DM, "", 5)
    await w.receipts.read("bob", DM, mid(4))
    (after,) = await w.receipts.conversations("bob", 10)
    assert (after.read_up_to, after.unread, after.last_id) == (mid(4), 2, mid(9))  # 6 and 8


async def test_unread_in_a_group_skips_events_own_messages_and_what_the_member_never_saw():
    w = await world(("alice", "bob"))
    timeline = [
        message(GROUP, 0, "alice", "created"),
        message(GROUP, 1, "alice"),
        message(GROUP, 2, "bob"),
        message(GROUP, 3, "alice", "removed"),  # bob removed
        message(GROUP, 4, "alice"),  # bob never saw it
        message(GROUP, 5, "alice", "added"),  # bob back
        message(GROUP, 6, "alice"),
        message(GROUP, 7, "bob"),
        message(GROUP, 8, "alice"),
    ]
    async with w.groups.changing(GID) as change:
        assert change is not None
        await change.remove("bob", mid(3))
    async with w.groups.changing(GID) as change:
        assert change is not None
        await change.add("bob", "member", mid(5))
    await w.history.write(timeline)
    (group,) = await w.receipts.conversations("bob", 10)
    assert (group.conv, group.last_id, group.unread) == (GROUP, mid(8), 3)  # 1, 6 and 8
    await w.receipts.read("bob", GROUP, mid(6))
    (group,) = await w.receipts.conversations("bob", 10)
    assert group.unread == 1


async def test_unread_is_counted_up_to_one_page():
    w = await world()
    await w.history.write([message(DM, i, "alice") for i in range(MAX_PAGE + 20)])
    (dm,) = await w.receipts.conversations("bob", 10)
    assert dm.unread == MAX_PAGE
    await w.receipts.read("bob", DM, mid(MAX_PAGE + 9))
    (dm,) = await w.receipts.conversations("bob", 10)
    assert dm.unread == 10


async def test_conversations_come_newest_first_each_with_its_own_mark():
    w = await world(("alice", "bob"))
    with_carol = dm_conversation("bob", "carol")
    await w.history.write(
        [message(DM, 1, "alice"), message(GROUP, 2, "alice"), message(with_carol, 3, "carol")]
    )
    await w.receipts.read("bob", GROUP, mid(2))
    listed = await w.receipts.conversations("bob", 10)
    assert [(c.conv, c.read_up_to, c.unread) for c in listed] == [
        (with_carol, "", 1),
        (GROUP, mid(2), 0),
        (DM, "", 1),
    ]


# --- the heads acks are read from ----------------------------------------------------------


def test_a_head_is_read_from_a_whole_stored_message():
    stored = msgspec.json.encode(message(GROUP, 4, "alice", "added"))
    assert decode_head(stored) == Head(mid(4), GROUP, "alice")
    assert decode_head(b"{}") == Head()
    with pytest.raises(msgspec.DecodeError):
        decode_head(b"not json")


def test_delivered_marks_keep_per_conversation_the_newest_id_and_its_senders():
    heads = [
        Head(mid(3), DM, "alice"),
        Head(mid(1), DM, "alice"),
        Head(mid(2), GROUP, "carol"),
        Head(mid(9), GROUP, "bob"),  # bob's own: no receipt for himself
        Head(mid(5), GROUP, "alice"),
        Head(mid(7), "", "alice"),  # not a message (no conversation)
    ]
    assert delivered_marks("bob", heads) == {
        DM: (mid(3), {"alice"}),
        GROUP: (mid(5), {"alice", "carol"}),
    }
    assert delivered_marks("bob", []) == {}


# --- membership is read fresh for receipts (the typing path caches it 5 s) ------------------


async def test_a_member_added_a_moment_ago_may_mark_read():
    w = await world(("alice", "bob"))
    await w.receipts.read("bob", GROUP, mid(1))  # the members are looked up (and cached)
    async with w.groups.changing(GID) as change:
        assert change is not None
        await change.add("carol", "member", mid(2))
    assert await w.receipts.read("carol", GROUP, mid(2)) == ReceiptState("carol", mid(2), mid(2))


async def test_a_removed_member_no_longer_reads_the_groups_marks():
    w = await world(("alice", "bob"))
    await w.receipts.read("bob", GROUP, mid(1))
    async with w.groups.changing(GID) as change:
        assert change is not None
        await change.remove("bob", mid(2))
    await refused(ErrorCode.FORBIDDEN, w.receipts.states("bob", GROUP))
