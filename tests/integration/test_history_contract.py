"""The history-store contract, run against every implementation: Postgres (the embedded
default) and Cassandra (production), both real servers."""

from __future__ import annotations

import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from helpers import CONV, T0, msg

from core.errors import ChatError
from core.history import FIRST_ID, MAX_PAGE, History
from core.model import ChatMessage, dm_conversation
from core.ports import HistoryStore, Refused
from storage.postgres import open_pool
from storage.postgres_history import PostgresHistoryStore

BUCKET_MS = 1000  # tiny time buckets, so a few seconds of messages cross many partitions

MakeStore = Callable[[int], Awaitable[HistoryStore]]


class NoGroups:
    """1:1 conversations only here; group history is tested in test_groups.py."""

    async def periods(self, group_id: str, user_id: str) -> list[object]:
        return []


@pytest.fixture(params=["postgres", "cassandra"])
def backend(request: pytest.FixtureRequest) -> tuple[str, object]:
    """Only the servers of the chosen backend are started (Cassandra's start is slow)."""
    fixture = {"postgres": "pg_dsn", "cassandra": "cassandra_history_factory"}[request.param]
    return request.param, request.getfixturevalue(fixture)


@pytest.fixture
async def make_store(backend: tuple[str, object]) -> AsyncIterator[MakeStore]:
    kind, value = backend
    if kind == "cassandra":
        yield value  # type: ignore[misc]
        return
    assert isinstance(value, str)
    pool = await open_pool(value, max_size=4)

    async def make(bucket_ms: int) -> HistoryStore:
        return PostgresHistoryStore(pool)

    yield make
    await pool.close()


@pytest.fixture
async def store(make_store: MakeStore) -> HistoryStore:
    return await make_store(BUCKET_MS)


async def test_empty_conversation(store: HistoryStore):
    assert await store.page(CONV, limit=10) == []
    assert await store.page(CONV, before="f" * 24, limit=10) == []
    assert await store.page(CONV, after=FIRST_ID, limit=10) == []
    assert await store.get(CONV, msg(CONV, T0).id) is None
    assert await store.conversations("alice", 10) == []


async def test_pages_are_in_id_order_whatever_the_write_order(store: HistoryStore):
    messages = [msg(CONV, T0 + i * 7, i % 3) for i in range(60)]
    shuffled = random.Random(1).sample(messages, len(messages))
    for start in range(0, 60, 13):
        await store.write(shuffled[start : start + 13])
    ids = sorted(m.id for m in messages)
    assert [m.id for m in await store.page(CONV, limit=60)] == ids
    assert [m.id for m in await store.page(CONV, limit=10)] == ids[-10:]
    assert (
        await store.page(CONV, before=ids[30], limit=5)
        == sorted(messages, key=lambda m: m.id)[25:30]
    )
    assert [m.id for m in await store.page(CONV, after=ids[30], limit=5)] == ids[31:36]
    assert await store.get(CONV, ids[7]) == min(
        (m for m in messages if m.id == ids[7]), key=lambda m: m.id
    )


async def test_paging_across_time_buckets_both_ways(store: HistoryStore):
    # 12 s of messages with empty seconds between: many buckets, some empty
    messages = [
        msg(CONV, T0 + s * 1000 + k * 97, k) for s in range(12) if s % 4 != 2 for k in range(5)
    ]
    await store.write(messages)
    ids = sorted(m.id for m in messages)
    backwards, before = [], None
    while page := await store.page(CONV, before=before, limit=7):
        backwards = [m.id for m in page] + backwards
        before = page[0].id
    assert backwards == ids
    forwards, after = [], FIRST_ID
    while page := await store.page(CONV, after=after, limit=7):
        forwards += [m.id for m in page]
        after = page[-1].id
    assert forwards == ids


async def test_writes_are_idempotent(store: HistoryStore):
    batch = [msg(CONV, T0 + i) for i in range(20)]
    await store.write(batch)
    await store.write(batch)
    await store.write(batch[5:10])
    assert [m.id for m in await store.page(CONV, limit=100)] == [m.id for m in batch]


async def test_around_a_message_and_page_size_caps(store: HistoryStore):
    messages = [msg(CONV, T0 + i * 300) for i in range(300)]
    await store.write(messages)
    history = History(store, NoGroups())
    ids = [m.id for m in messages]
    around = await history.page("alice", CONV, around=ids[150], limit=11)
    assert [m.id for m in around] == ids[145:156]
    near_start = await history.page("bob", CONV, around=ids[2], limit=11)
    assert [m.id for m in near_start] == ids[0:11]
    near_end = await history.page("bob", CONV, around=ids[-1], limit=11)
    assert [m.id for m in near_end] == ids[-6:]
    capped = await history.page("alice", CONV, limit=10_000)
    assert len(capped) == MAX_PAGE and [m.id for m in capped] == ids[-MAX_PAGE:]
    with pytest.raises(ChatError) as info:
        await history.page("mallory", CONV)
    assert info.value.code.value == "forbidden"


async def test_each_users_conversations_newest_first(store: HistoryStore):
    with_bob, with_carol = dm_conversation("alice", "bob"), dm_conversation("alice", "carol")
    newest_bob = msg(with_bob, T0 + 5000)
    await store.write([newest_bob, msg(with_carol, T0 + 3000)])
    await store.write([msg(with_bob, T0 + 1000)])  # older, written later: changes nothing
    convs = await store.conversations("alice", 10)
    assert [(c.conv, c.last_id) for c in convs] == [
        (with_bob, newest_bob.id),
        (with_carol, msg(with_carol, T0 + 3000).id),
    ]
    assert [c.conv for c in await store.conversations("carol", 10)] == [with_carol]
    assert len(await store.conversations("alice", 1)) == 1


async def test_100000_messages_page_from_end_to_start(make_store: MakeStore):
    store = await make_store(3_600_000)  # hour buckets: the 7 hours below span 8 partitions
    n = 100_000
    messages = [msg(CONV, T0 + (i // 4) * 1000 + i % 4, i % 4) for i in range(n)]
    for start in range(0, n, 2000):
        await store.write(messages[start : start + 2000])
    pages: list[list[str]] = []
    before = None
    while page := await store.page(CONV, before=before, limit=MAX_PAGE):
        pages.append([m.id for m in page])
        before = page[0].id
    seen = [i for page in reversed(pages) for i in page]
    assert seen == [m.id for m in messages]  # every message once, in order: no gap, no repeat


async def test_every_field_round_trips_group_events_included(store: HistoryStore):
    conv = "group.0123456789abcdef"
    event = ChatMessage(
        id=f"{T0:012x}0000abcdef01",
        conv=conv,
        sender="alice",
        sender_device="dev",
        to=conv,
        text="alice added bob",
        ts=T0,
        client_id="event-1",
        event="added",
        target="bob",
    )
    plain = msg(CONV, T0 + 1, text="héllo 😀")
    await store.write([event, plain])
    assert await store.get(conv, event.id) == event
    assert await store.page(conv, limit=5) == [event]
    assert await store.get(CONV, plain.id) == plain


async def test_a_message_the_store_can_never_hold_is_refused_and_the_rest_still_written(
    store: HistoryStore, backend: tuple[str, object]
):
    # a conversation key over Cassandra's 64 KiB key limit and Postgres's index row limit
    # (random, so that Postgres cannot compress it under the limit)
    huge = msg(dm_conversation(secrets.token_hex(35_000), "bob"), T0)
    refused = [huge]
    if backend[0] == "postgres":
        refused.append(msg(CONV, T0 + 1, text="a\0b"))  # Postgres text holds no NUL
    good = msg(CONV, T0 + 2)
    for bad in refused:
        with pytest.raises(Refused) as info:
            await store.write([bad])
        assert info.value.message_id == bad.id  # one message: named
        assert "\0" not in info.value.reason and len(info.value.reason) <= Refused.REASON_CHARS
        with pytest.raises(Refused):
            await store.write([good, bad])
    await store.write([good])
    assert await store.get(CONV, good.id) == good
    assert [c.last_id for c in await store.conversations("bob", 10)] == [good.id]
