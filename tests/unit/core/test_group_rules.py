"""Groups' rules (core/groups.py) against in-memory stores: who may change a group, the member
limit, the timeline events every change writes, and who gets a group's messages."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import pytest
from fakes import (
    FakeClock,
    MemoryAccounts,
    MemoryGroupLog,
    MemoryGroups,
    MemoryHistory,
    MemoryInbox,
    MemoryLedger,
    NoRevocations,
)

from core.accounts import Accounts
from core.errors import ChatError, ErrorCode
from core.groups import ADMIN, MEMBER, GroupInfo, Groups
from core.history import History
from core.identifiers import MAX_GROUP_NAME_CHARS
from core.ids import MessageIds
from core.messaging import Messaging, SendRequest
from core.model import ChatMessage, Member, User, group_conversation

USERS = ("alice", "bob", "carol", "dave", "erin")


@dataclass
class World:
    clock: FakeClock
    inbox: MemoryInbox
    store: MemoryGroups
    log: MemoryGroupLog
    messaging: Messaging
    groups: Groups

    def received(self, user: str) -> list[ChatMessage]:
        """What reached the user's inbox, in order."""
        return [
            msgspec.json.decode(data, type=ChatMessage)
            for _, u, data in self.inbox.entries
            if u == user
        ]

    def events(self, group_id: str) -> list[tuple[str, str]]:
        """The group's timeline as (event, target); a message shows as ("", "")."""
        return [(m.event, m.target) for m in self.timeline(group_id)]

    def timeline(self, group_id: str) -> list[ChatMessage]:
        return self.log.timeline(group_id)


@functools.cache
def accounts() -> Accounts:
    """The users, shared by the tests, which only ask whether one exists (Accounts hashes a
    dummy password when built, a third of a second)."""
    store = MemoryAccounts()
    store.users = {name: User(name, name, "x", 0) for name in USERS}
    return Accounts(store, FakeClock(), 3600, NoRevocations())


async def world(max_members: int = 5) -> World:
    clock = FakeClock()
    inbox, store, log = MemoryInbox(clock), MemoryGroups(), MemoryGroupLog(clock)
    messaging = Messaging(accounts(), inbox, MemoryLedger(), MessageIds(clock), 1000, store, log)
    groups = Groups(store, messaging, accounts(), clock, max_members)
    return World(clock, inbox, store, log, messaging, groups)


def roles(info: GroupInfo) -> dict[str, str]:
    return {m.user_id: m.role for m in info.members}


async def refused(code: ErrorCode, action: Awaitable[object]) -> None:
    with pytest.raises(ChatError) as info:
        await action
    assert info.value.code == code, info.value


async def say(w: World, sender: str, group_id: str, text: str) -> None:
    w.clock.now += 1
    await w.messaging.send(
        sender, "d1", SendRequest(f"{sender}-{text}", group_conversation(group_id), text)
    )


# --- creating ----------------------------------------------------------------------------------


async def test_the_creator_is_the_first_admin_and_every_member_gets_the_created_event():
    w = await world()
    info = await w.groups.create("alice", "d1", "trip", ["bob", "carol", "bob", "alice"])
    assert info.name == "trip" and info.created_by == "alice" and info.conv == f"group.{info.id}"
    assert roles(info) == {"alice": ADMIN, "bob": MEMBER, "carol": MEMBER}
    (created,) = w.timeline(info.id)
    assert (created.event, created.sender, created.conv) == ("created", "alice", info.conv)
    assert {m.joined_id for m in info.members} == {created.id}
    for user in ("alice", "bob", "carol"):
        assert w.received(user) == [created]
        assert await w.groups.info(user, info.id) == info
        assert [g.id for g in await w.groups.mine(user)] == [info.id]
        periods = await w.store.periods(info.id, user)
        assert [(p.joined_id, p.left_id) for p in periods] == [(created.id, None)]
    assert w.received("dave") == [] and await w.groups.mine("dave") == []
    await refused(ErrorCode.NOT_FOUND, w.groups.info("dave", info.id))
    await refused(ErrorCode.NOT_FOUND, w.groups.info("alice", "fedcba9876543210"))


@pytest.mark.parametrize(
    ("name", "members", "code"),
    [
        ("", ["bob"], ErrorCode.INVALID_ARGUMENT),
        ("x" * (MAX_GROUP_NAME_CHARS + 1), ["bob"], ErrorCode.INVALID_ARGUMENT),
        ("trip", ["bob", "nobody"], ErrorCode.NOT_FOUND),
        ("trip", ["bob", "Not A User"], ErrorCode.NOT_FOUND),
        ("trip", ["bob", "carol", "dave"], ErrorCode.GROUP_FULL),  # 4 with alice; 3 at most
    ],
)
async def test_a_refused_create_writes_nothing(name: str, members: list[str], code: ErrorCode):
    w = await world(max_members=3)
    await refused(code, w.groups.create("alice", "d1", name, members))
    assert w.store.groups == {} and w.log.entries == [] and w.inbox.entries == []


async def test_a_group_may_be_created_full_and_with_the_longest_name():
    w = await world(max_members=3)
    info = await w.groups.create("alice", "d1", "x" * MAX_GROUP_NAME_CHARS, ["bob", "carol"])
    assert len(info.members) == 3
    await refused(ErrorCode.GROUP_FULL, w.groups.add("alice", "d1", info.id, "dave"))
    assert [e for e, _ in w.events(info.id)] == ["created"]


# --- who may change a group ----------------------------------------------------------------

Change = Callable[[Groups, str, str], Awaitable[object]]
CHANGES: dict[str, Change] = {
    "add": lambda g, actor, gid: g.add(actor, "d1", gid, "dave"),
    "remove": lambda g, actor, gid: g.remove(actor, "d1", gid, "carol"),
    "promote": lambda g, actor, gid: g.promote(actor, "d1", gid, "carol"),
    "rename": lambda g, actor, gid: g.rename(actor, "d1", gid, "new name"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
async def test_only_admins_change_a_group_others_are_refused_and_nothing_is_written(change: str):
    w = await world()
    info = await w.groups.create("alice", "d1", "trip", ["bob", "carol"])
    before = (w.store.groups.copy(), list(w.store.member_lists[info.id]), list(w.log.entries))
    await refused(ErrorCode.FORBIDDEN, CHANGES[change](w.groups, "bob", info.id))
    await refused(ErrorCode.NOT_FOUND, CHANGES[change](w.groups, "erin", info.id))
    await refused(ErrorCode.NOT_FOUND, CHANGES[change](w.groups, "alice", "fedcba9876543210"))
    assert (w.store.groups, w.store.member_lists[info.id], w.log.entries) == before
    await CHANGES[change](w.groups, "alice", info.id)  # the admin may
    assert len(w.log.entries) == 2


async def test_a_promoted_member_may_manage_the_group():
    w = await world()
    info = await w.groups.create("alice", "d1", "trip", ["bob", "carol"])
    promoted = await w.groups.promote("alice", "d1", info.id, "bob")
    assert roles(promoted) == {"alice": ADMIN, "bob": ADMIN, "carol": MEMBER}
    added = await w.groups.add("bob", "d1", info.id, "dave")
    assert roles(added)["dave"] == MEMBER
    await w.groups.remove("bob", "d1", info.id, "alice")  # an admin may remove another
    assert roles(await w.groups.info("bob", info.id)) == {
        "bob": ADMIN,
        "carol": MEMBER,
        "dave": MEMBER,
    }


async def test_add_refuses_members_unknown_users_and_a_full_group():
    w = await world(max_members=3)
    info = await w.groups.create("alice", "d1", "trip", ["bob"])
    await refused(ErrorCode.INVALID_ARGUMENT, w.groups.add("alice", "d1", info.id, "bob"))
    await refused(ErrorCode.NOT_FOUND, w.groups.add("alice", "d1", info.id, "nobody"))
    await w.groups.add("alice", "d1", info.id, "carol")
    await refused(ErrorCode.GROUP_FULL, w.groups.add("alice", "d1", info.id, "dave"))
    await w.groups.remove("alice", "d1", info.id, "bob")  # a place frees up
    await w.groups.add("alice", "d1", info.id, "dave")
    assert set(roles(await w.groups.info("alice", info.id))) == {"alice", "carol", "dave"}


async def test_remove_refuses_non_members_on_either_side():
    w = await world()
    info = await w.groups.create("alice", "d1", "trip", ["bob"])
    await refused(ErrorCode.NOT_FOUND, w.groups.remove("alice", "d1", info.id, "carol"))
    await refused(ErrorCode.NOT_FOUND, w.groups.remove("carol", "d1", info.id, "bob"))
    await refused(ErrorCode.NOT_FOUND, w.groups.remove("carol", "d1", info.id, "carol"))
    await refused(ErrorCode.NOT_FOUND, w.groups.remove("bob", "d1", "fedcba9876543210", "bob"))
    assert [e for e, _ in w.events(info.id)] == ["created"]


async def test_rename_changes_the_name_and_tells_the_members():
    w = await world()
    info = await w.groups.create("alice", "d1", "trip", ["bob"])
    renamed = await w.groups.rename("alice", "d1", info.id, "holiday")
    assert renamed.name == "holiday" == (await w.groups.info("bob", info.id)).name
    await refused(ErrorCode.INVALID_ARGUMENT, w.groups.rename("alice", "d1", info.id, ""))
    last = w.received("bob")[-1]
    assert (last.event, last.text) == ("renamed", "alice renamed the group to 'holiday'")


# --- leaving, removal, and who gets what ------------------------------------------------------


async def test_anyone_may_leave_and_the_leaver_gets_the_leave_event_then_nothing():
    w = await world()
    info = await w.groups.create("alice", "d1", "trip", ["bob", "carol"])
    await w.groups.remove("bob", "d1", info.id, "bob")
    left = w.timeline(info.id)[-1]
    assert (left.event, left.sender, left.target, left.text) == ("left", "bob", "bob", "bob left")
    assert w.received("bob")[-1] == left and w.received("carol")[-1] == left
    await say(w, "alice", info.id, "after")
    assert [m.text for m in w.received("carol")][-1] == "after"
    assert w.received("bob")[-1] == left
    await refused(ErrorCode.NOT_FOUND, w.groups.info("bob", info.id))
    assert await w.groups.mine("bob") == []
    periods = await w.store.periods(info.id, "bob")
    assert [p.left_id for p in periods] == [left.id]


async def test_a_removed_member_gets_the_removal_then_nothing_and_may_not_send():
    w = await world()
    info = await w.groups.create("alice", "d1", "trip", ["bob", "carol"])
    await say(w, "bob", info.id, "hello")
    await w.groups.remove("alice", "d1", info.id, "bob")
    await say(w, "carol", info.id, "bob is gone")
    assert [(m.event, m.text) for m in w.received("bob")] == [
        ("created", "alice created 'trip'"),
        ("", "hello"),
        ("removed", "alice removed bob"),
    ]
    assert [m.text for m in w.received("carol")][-1] == "bob is gone"
    await refused(ErrorCode.FORBIDDEN, say(w, "bob", info.id, "let me back"))
    assert [e for e, _ in w.events(info.id)][-1] == ""  # carol's message is the last entry


async def test_a_re_added_member_reads_only_their_stretches_of_history():
    w = await world()
    info = await w.groups.create("alice", "d1", "trip", ["bob"])
    await say(w, "alice", info.id, "one")
    await w.groups.remove("alice", "d1", info.id, "bob")
    await say(w, "alice", info.id, "while bob was out")
    await w.groups.add("alice", "d1", info.id, "bob")
    await say(w, "alice", info.id, "two")
    archive = MemoryHistory()
    await archive.write(w.timeline(info.id))  # as the archiver would
    history = History(archive, w.store)
    seen = [m.text for m in await history.page("bob", info.conv)]
    assert seen == [
        "alice created 'trip'",
        "one",
        "alice removed bob",
        "alice added bob",
        "two",
    ]
    assert [m.text for m in w.received("bob")] == seen  # the inbox got exactly the same
    assert len(await history.page("alice", info.conv)) == 6


# --- the timeline ------------------------------------------------------------------------------


async def test_every_change_is_a_timeline_event_in_the_order_made_with_increasing_ids():
    w = await world()
    info = await w.groups.create("alice", "d1", "trip", ["bob"])
    await w.groups.add("alice", "d1", info.id, "carol")
    await w.groups.promote("alice", "d1", info.id, "carol")
    w.clock.now -= 5_000  # the clock steps back: ids still follow the timeline
    await w.groups.rename("carol", "d1", info.id, "holiday")
    await w.groups.remove("carol", "d1", info.id, "bob")
    await w.groups.add("carol", "d1", info.id, "dave")
    await w.groups.remove("carol", "d1", info.id, "carol")
    assert w.events(info.id) == [
        ("created", ""),
        ("added", "carol"),
        ("promoted", "carol"),
        ("renamed", ""),
        ("removed", "bob"),
        ("added", "dave"),
        ("left", "carol"),
    ]
    ids = [m.id for m in w.timeline(info.id)]
    assert ids == sorted(set(ids))
    final = await w.groups.info("alice", info.id)
    assert {m.user_id: m.joined_id for m in final.members} == {"alice": ids[0], "dave": ids[5]}
    # each member got the events of their stretch, in the timeline's order
    assert [m.id for m in w.received("alice")] == ids
    assert [m.id for m in w.received("bob")] == ids[:5]
    assert [m.id for m in w.received("carol")] == ids[1:]
    assert [m.id for m in w.received("dave")] == ids[5:]


async def test_an_event_written_after_another_process_moved_the_timeline_goes_after_it():
    w = await world()
    info = await w.groups.create("alice", "d1", "trip", ["bob"])
    ahead = w.clock.now + 60_000  # the other process's clock is a minute ahead
    rival = ChatMessage(f"{ahead:012x}0000deadbeef", info.conv, "bob", "d9", info.conv, "hi", ahead)
    w.log.rivals.append((info.id, msgspec.json.encode(rival)))
    await w.groups.add("alice", "d1", info.id, "carol")
    created, first, added = w.timeline(info.id)
    assert first == rival and added.event == "added" and added.id > rival.id
    assert roles(await w.groups.info("carol", info.id))["carol"] == MEMBER
    assert (await w.store.periods(info.id, "carol"))[0].joined_id == added.id


async def test_a_change_that_fails_part_way_changes_no_membership():
    w = await world()
    info = await w.groups.create("alice", "d1", "trip", ["bob"])
    w.inbox.fail_next_append = True  # the copies of the event are not written
    with pytest.raises(TimeoutError):  # MemoryInbox's failure, passed on as it came
        await w.groups.add("alice", "d1", info.id, "carol")
    assert set(roles(await w.groups.info("alice", info.id))) == {"alice", "bob"}
    assert await w.store.periods(info.id, "carol") == []
    await w.groups.add("alice", "d1", info.id, "carol")  # tried again, it is done
    assert set(roles(await w.groups.info("carol", info.id))) == {"alice", "bob", "carol"}


# --- verify_action: the events a member receives turn the old state into the new one ----------


def apply(members: list[Member], event: ChatMessage) -> list[Member]:
    """A client's view of the member list, moved by one timeline event."""
    if event.event == "added":
        return [*members, Member(event.target, MEMBER, event.id)]
    if event.event in ("removed", "left"):
        return [m for m in members if m.user_id != event.target]
    if event.event == "promoted":
        return [
            Member(m.user_id, ADMIN, m.joined_id) if m.user_id == event.target else m
            for m in members
        ]
    return members


ACTIONS: list[tuple[str, Change]] = [
    ("add carol", lambda g, _, gid: g.add("alice", "d1", gid, "carol")),
    ("promote carol", lambda g, _, gid: g.promote("alice", "d1", gid, "carol")),
    ("carol adds dave", lambda g, _, gid: g.add("carol", "d1", gid, "dave")),
    ("rename", lambda g, _, gid: g.rename("carol", "d1", gid, "holiday")),
    ("remove bob", lambda g, _, gid: g.remove("carol", "d1", gid, "bob")),
    ("dave leaves", lambda g, _, gid: g.remove("dave", "d1", gid, "dave")),
    ("add bob again", lambda g, _, gid: g.add("alice", "d1", gid, "bob")),
]


async def test_applying_the_received_events_gives_the_state_fetched_afresh():
    w = await world()
    info = await w.groups.create("alice", "d1", "trip", ["bob"])
    for _, action in ACTIONS:
        state = sorted((await w.groups.info("alice", info.id)).members, key=lambda m: m.user_id)
        seen = len(w.received("alice"))
        await action(w.groups, "alice", info.id)
        for event in w.received("alice")[seen:]:
            state = apply(state, event)
        fresh = (await w.groups.info("alice", info.id)).members
        assert sorted(state, key=lambda m: m.user_id) == sorted(fresh, key=lambda m: m.user_id)


# --- one device's sends ------------------------------------------------------------------------


@pytest.mark.parametrize("kinds", ["gd", "dgd", "ddggd", "gdgdgd", "dddg"])
async def test_one_devices_sends_get_increasing_ids_in_send_order_whatever_their_kind(kinds: str):
    # a group send's id is drawn when it takes its place in the timeline; the 1:1 sends of
    # the same batch used to draw theirs at the start, so one after a group send got the
    # smaller id
    w = await world()
    info = await w.groups.create("alice", "d1", "trip", ["bob"])
    requests = [
        SendRequest(f"c{n}", info.conv if kind == "g" else "bob", f"m{n}")
        for n, kind in enumerate(kinds)
    ]
    results = await w.messaging.send_many("alice", "d1", requests)
    ids = [r.id for r in results if not isinstance(r, ChatError)]
    assert len(ids) == len(kinds) and ids == sorted(ids) and len(set(ids)) == len(ids)
    # the group's ids still follow its timeline
    timeline = [m.id for m in w.timeline(info.id)]
    assert timeline == sorted(timeline)
