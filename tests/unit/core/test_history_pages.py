"""History's range walks (core/history.py) against in-memory stores: pages before, after and
around a message, the newest page, the page cap, the stretches of a group a member may read,
and each user's conversation list."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import MemoryGroups, MemoryHistory
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ChatError, ErrorCode
from core.history import FIRST_ID, MAX_CONVERSATIONS, MAX_PAGE, History
from core.model import ChatMessage, Group, Member, dm_conversation, group_conversation

T0 = 1_790_000_000_000
GID = "0123456789abcdef"
GROUP = group_conversation(GID)
DM = dm_conversation("alice", "bob")


def mid(n: int) -> str:
    """The id of the n-th message of a conversation (one per ms, as the server would give)."""
    return f"{T0 + n:012x}0000abcdef01"


def message(conv: str, n: int, sender: str = "alice", event: str = "") -> ChatMessage:
    return ChatMessage(
        id=mid(n),
        conv=conv,
        sender=sender,
        sender_device="dev",
        to=conv if conv == GROUP else "bob",
        text=f"#{n}",
        ts=T0 + n,
        event=event,
    )


def ns(page: list[ChatMessage]) -> list[int]:
    """A page as the numbers of its messages."""
    return [m.ts - T0 for m in page]


async def dm_history(n: int) -> History:
    store = MemoryHistory()
    await store.write([message(DM, i, ("alice", "bob")[i % 2]) for i in range(n)])
    return History(store, MemoryGroups())


async def group_history(
    n: int, stretches: dict[str, list[tuple[int, int | None]]]
) -> tuple[History, MemoryHistory, MemoryGroups]:
    """A group timeline of messages 0..n-1, and each user's stretches of membership (by message
    number, both included; None: still a member), set as Groups sets them."""
    store, groups = MemoryHistory(), MemoryGroups()
    await store.write([message(GROUP, i) for i in range(n)])
    await groups.create(Group(GID, "trip", "alice", T0), [])
    edges = sorted(
        [(j, "join", u) for u, ss in stretches.items() for j, _ in ss]
        + [(left, "leave", u) for u, ss in stretches.items() for _, left in ss if left is not None]
    )
    for at, kind, user in edges:
        async with groups.changing(GID) as change:
            assert change is not None
            if kind == "join":
                await change.add(user, "member", mid(at))
            else:
                await change.remove(user, mid(at))
    return History(store, groups), store, groups


# --- 1:1 conversations ---------------------------------------------------------------------


async def test_an_empty_conversation_has_empty_pages_whichever_way():
    history = await dm_history(0)
    assert await history.page("alice", DM) == []
    assert await history.page("alice", DM, before=mid(5)) == []
    assert await history.page("alice", DM, after=FIRST_ID) == []
    assert await history.page("bob", DM, around=mid(5)) == []
    assert await history.conversations("alice") == []


async def test_the_newest_page_and_pages_before_and_after_a_message():
    history = await dm_history(30)
    assert ns(await history.page("alice", DM, limit=10)) == list(range(20, 30))
    assert ns(await history.page("alice", DM, before=mid(20), limit=5)) == list(range(15, 20))
    assert ns(await history.page("alice", DM, before=mid(3), limit=5)) == [0, 1, 2]
    assert ns(await history.page("bob", DM, after=mid(20), limit=5)) == list(range(21, 26))
    assert ns(await history.page("bob", DM, after=mid(27), limit=5)) == [28, 29]
    assert ns(await history.page("bob", DM, after=FIRST_ID, limit=3)) == [0, 1, 2]
    assert await history.page("bob", DM, after=mid(29)) == []
    assert await history.page("bob", DM, before=mid(0)) == []


@pytest.mark.parametrize("limit", [1, 2, 7, 30, 31])
async def test_paging_back_and_forth_sees_every_message_once(limit: int):
    history = await dm_history(30)
    back: list[int] = []
    page = await history.page("alice", DM, limit=limit)
    while page:
        back = ns(page) + back
        page = await history.page("alice", DM, before=page[0].id, limit=limit)
    forth: list[int] = []
    page = await history.page("alice", DM, after=FIRST_ID, limit=limit)
    while page:
        forth += ns(page)
        page = await history.page("alice", DM, after=page[-1].id, limit=limit)
    assert back == forth == list(range(30))


async def test_around_a_message_half_the_page_each_side_more_after_when_short_before():
    history = await dm_history(30)
    assert ns(await history.page("alice", DM, around=mid(15), limit=5)) == [13, 14, 15, 16, 17]
    assert ns(await history.page("alice", DM, around=mid(15), limit=4)) == [14, 15, 16, 17]
    assert ns(await history.page("alice", DM, around=mid(15), limit=1)) == [15]
    # near the start the page fills up with newer messages; near the end it stays short
    assert ns(await history.page("alice", DM, around=mid(1), limit=5)) == [0, 1, 2, 3, 4]
    assert ns(await history.page("alice", DM, around=mid(29), limit=5)) == [27, 28, 29]


async def test_around_an_id_that_is_no_message_gives_its_neighbours():
    store = MemoryHistory()
    await store.write([message(DM, i) for i in range(0, 20, 2)])  # even numbers only
    history = History(store, MemoryGroups())
    assert ns(await history.page("alice", DM, around=mid(9), limit=5)) == [6, 8, 10, 12, 14]


async def test_a_page_holds_at_most_max_page_messages():
    history = await dm_history(MAX_PAGE + 50)
    newest = await history.page("alice", DM, limit=10_000)
    assert ns(newest) == list(range(50, MAX_PAGE + 50))
    oldest = await history.page("alice", DM, after=FIRST_ID, limit=MAX_PAGE + 1)
    assert ns(oldest) == list(range(MAX_PAGE))
    around = await history.page("alice", DM, around=mid(75), limit=10_000)
    assert len(around) == MAX_PAGE and mid(75) in {m.id for m in around}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": -1},
        {"before": mid(1), "after": mid(0)},
        {"before": mid(1), "around": mid(0)},
        {"after": "not-an-id"},
        {"around": mid(1).upper()},
    ],
)
async def test_bad_page_requests_are_refused(kwargs: dict[str, Any]):
    history = await dm_history(3)
    with pytest.raises(ChatError) as info:
        await history.page("alice", DM, **kwargs)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT


async def test_only_the_two_people_of_a_dm_read_it():
    history = await dm_history(3)
    assert len(await history.page("bob", DM)) == 3
    with pytest.raises(ChatError) as info:
        await history.page("mallory", DM)
    assert info.value.code == ErrorCode.FORBIDDEN
    with pytest.raises(ChatError) as info:
        await history.page("alice", "channel.general")
    assert info.value.code == ErrorCode.NOT_FOUND


async def test_notes_to_self_are_a_dm_with_one_member():
    store = MemoryHistory()
    note = dm_conversation("alice", "alice")
    await store.write([message(note, 1)])
    history = History(store, MemoryGroups())
    assert ns(await history.page("alice", note)) == [1]
    with pytest.raises(ChatError):
        await history.page("bob", note)


# --- groups: the stretches a member belonged to ----------------------------------------------

# bob was in from the start, removed by event 9, added again by event 20;
# dave joined with event 20; carol never joined
STRETCHES: dict[str, list[tuple[int, int | None]]] = {
    "alice": [(0, None)],
    "bob": [(0, 9), (20, None)],
    "dave": [(20, None)],
}
BOB_READS = [*range(0, 10), *range(20, 30)]


async def test_a_member_reads_every_stretch_they_belonged_to_and_only_those():
    history, _, _ = await group_history(30, STRETCHES)
    assert ns(await history.page("alice", GROUP, limit=100)) == list(range(30))
    assert ns(await history.page("bob", GROUP, limit=100)) == BOB_READS
    assert ns(await history.page("dave", GROUP, limit=100)) == list(range(20, 30))
    assert ns(await history.page("bob", GROUP, after=FIRST_ID, limit=100)) == BOB_READS


async def test_someone_who_never_belonged_to_a_group_reads_nothing_of_it():
    history, _, _ = await group_history(30, STRETCHES)
    for user, conv in [("carol", GROUP), ("bob", group_conversation("fedcba9876543210"))]:
        with pytest.raises(ChatError) as info:
            await history.page(user, conv)
        assert info.value.code == ErrorCode.FORBIDDEN
    with pytest.raises(ChatError) as info:
        await history.page("bob", "group.not-a-group-id")
    assert info.value.code == ErrorCode.NOT_FOUND


async def test_pages_cross_the_gap_between_stretches():
    history, _, _ = await group_history(30, STRETCHES)
    assert ns(await history.page("bob", GROUP, before=mid(22), limit=5)) == [7, 8, 9, 20, 21]
    assert ns(await history.page("bob", GROUP, after=mid(5), limit=6)) == [6, 7, 8, 9, 20, 21]
    # an anchor inside the gap: the neighbours on both sides, not the anchor
    assert ns(await history.page("bob", GROUP, around=mid(15), limit=5)) == [8, 9, 20, 21, 22]
    assert ns(await history.page("bob", GROUP, before=mid(15), limit=3)) == [7, 8, 9]
    assert ns(await history.page("bob", GROUP, after=mid(15), limit=3)) == [20, 21, 22]


async def test_pages_that_end_exactly_at_a_stretch_edge():
    history, _, _ = await group_history(30, STRETCHES)
    # the events that removed and re-added bob belong to his stretches; bounds are excluded
    assert ns(await history.page("bob", GROUP, before=mid(20), limit=3)) == [7, 8, 9]
    assert ns(await history.page("bob", GROUP, before=mid(21), limit=3)) == [8, 9, 20]
    assert ns(await history.page("bob", GROUP, before=mid(10), limit=3)) == [7, 8, 9]
    assert ns(await history.page("bob", GROUP, after=mid(9), limit=3)) == [20, 21, 22]
    assert ns(await history.page("bob", GROUP, after=mid(8), limit=3)) == [9, 20, 21]
    assert ns(await history.page("bob", GROUP, after=mid(19), limit=3)) == [20, 21, 22]
    assert ns(await history.page("bob", GROUP, around=mid(9), limit=3)) == [8, 9, 20]
    assert ns(await history.page("bob", GROUP, around=mid(20), limit=3)) == [9, 20, 21]
    assert ns(await history.page("bob", GROUP, before=mid(10), limit=10)) == list(range(10))
    assert ns(await history.page("bob", GROUP, after=mid(9), limit=10)) == list(range(20, 30))
    assert await history.page("bob", GROUP, before=mid(0)) == []
    assert await history.page("bob", GROUP, after=mid(29)) == []
    assert await history.page("dave", GROUP, before=mid(20)) == []


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 9, 10, 11, 25])
async def test_walking_a_members_history_both_ways_whatever_the_page_size(limit: int):
    history, _, _ = await group_history(30, STRETCHES)
    back: list[int] = []
    page = await history.page("bob", GROUP, limit=limit)
    while page:
        back = ns(page) + back
        page = await history.page("bob", GROUP, before=page[0].id, limit=limit)
    forth: list[int] = []
    page = await history.page("bob", GROUP, after=FIRST_ID, limit=limit)
    while page:
        forth += ns(page)
        page = await history.page("bob", GROUP, after=page[-1].id, limit=limit)
    assert back == forth == BOB_READS


async def test_a_long_gap_between_stretches_is_skipped_not_read_page_by_page():
    # 500 messages bob was not there for: the pages around them are still full
    history, _, _ = await group_history(520, {"bob": [(0, 9), (510, None)]})
    assert ns(await history.page("bob", GROUP, after=mid(7), limit=5)) == [8, 9, 510, 511, 512]
    assert ns(await history.page("bob", GROUP, before=mid(512), limit=5)) == [7, 8, 9, 510, 511]


def model_page(readable: list[int], kind: str, anchor: int, limit: int) -> list[int]:
    """What :meth:`History.page` documents, spelled out over message numbers."""
    limit = min(limit, MAX_PAGE)
    if kind == "newest":
        return readable[-limit:]
    if kind == "before":
        return [i for i in readable if i < anchor][-limit:]
    if kind == "after":
        return [i for i in readable if i > anchor][:limit]
    older = (limit - 1) // 2
    below = [i for i in readable if i < anchor][-older:] if older else []
    middle = [anchor] if anchor in readable else []
    above = [i for i in readable if i > anchor][: limit - len(below) - len(middle)]
    return below + middle + above


@st.composite
def stretches_of(draw: st.DrawFn, n: int) -> list[tuple[int, int | None]]:
    edges = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=8)))
    pairs: list[tuple[int, int | None]] = []
    for k in range(0, len(edges), 2):
        pairs.append((edges[k], edges[k + 1] if k + 1 < len(edges) else None))
    return pairs


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 40),
    kind=st.sampled_from(["newest", "before", "after", "around"]),
    limit=st.integers(1, 45),
)
async def test_any_page_of_any_stretches_is_the_readable_messages_cut_as_documented(
    data: st.DataObject, n: int, kind: str, limit: int
):
    stretches = data.draw(stretches_of(n))
    anchor = data.draw(st.integers(-1, n))
    history, store, _ = await group_history(n, {"bob": stretches})
    await store.write([message(DM, i) for i in range(n)])  # another conversation beside it
    readable = [
        i for i in range(n) if any(j <= i and (left is None or i <= left) for j, left in stretches)
    ]
    anchors = {} if kind == "newest" else {kind: mid(anchor)}
    page = await history.page("bob", GROUP, limit=limit, **anchors)
    assert ns(page) == model_page(readable, kind, anchor, limit)


# --- conversations ---------------------------------------------------------------------------


async def test_conversations_list_dms_and_current_groups_newest_first():
    history, store, groups = await group_history(
        10, {"alice": [(0, None)], "bob": [(0, 4)], "carol": [(0, None)]}
    )
    other = "fedcba9876543210"
    await groups.create(Group(other, "old", "alice", T0), [Member("alice", "admin", mid(0))])
    with_bob, with_carol = DM, dm_conversation("alice", "carol")
    await store.write([message(with_bob, 12), message(with_bob, 3), message(with_carol, 7)])
    # the second group has no message in history yet (the archiver lags): not listed
    listed = await history.conversations("alice")
    assert [(c.conv, c.last_id) for c in listed] == [
        (with_bob, mid(12)),
        (GROUP, mid(9)),
        (with_carol, mid(7)),
    ]
    assert [c.conv for c in await history.conversations("alice", limit=2)] == [with_bob, GROUP]
    assert [c.conv for c in await history.conversations("alice", limit=0)] == [with_bob]
    # bob left the group: it is no longer his conversation, though he still reads his stretch
    assert [c.conv for c in await history.conversations("bob")] == [with_bob]
    assert ns(await history.page("bob", GROUP)) == [0, 1, 2, 3, 4]
    assert [(c.conv, c.last_id) for c in await history.conversations("carol")] == [
        (GROUP, mid(9)),
        (with_carol, mid(7)),
    ]


async def test_a_re_added_member_sees_the_groups_newest_message_they_may_read():
    history, store, groups = await group_history(10, {"bob": [(0, 3)], "alice": [(0, None)]})
    assert [c.conv for c in await history.conversations("bob")] == []
    async with groups.changing(GID) as change:
        assert change is not None
        await change.add("bob", "member", mid(10))
    await store.write([message(GROUP, 10, event="added"), message(GROUP, 11)])
    assert [(c.conv, c.last_id) for c in await history.conversations("bob")] == [(GROUP, mid(11))]


async def test_the_conversation_list_is_capped():
    store = MemoryHistory()
    await store.write(
        [message(dm_conversation("alice", f"user{i:04d}"), i) for i in range(MAX_CONVERSATIONS + 5)]
    )
    history = History(store, MemoryGroups())
    listed = await history.conversations("alice", limit=10_000)
    assert len(listed) == MAX_CONVERSATIONS
    assert listed[0].last_id == mid(MAX_CONVERSATIONS + 4)
