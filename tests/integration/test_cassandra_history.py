"""What is particular to the Cassandra history store, on a real Cassandra node (the behaviour
both stores share is in test_history_contract.py): its schema and migrations, time buckets and
their index, idempotent writes, and write-order independence of the conversation lists."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import Session
from helpers import CONV, T0, msg
from servers import process_alive

from core.model import dm_conversation
from devtools.cassandra import CassandraNode, stop_pidfile
from storage.cassandra_history import (
    BUCKET_SCAN,
    MAX_BATCH_CHARS,
    MIGRATIONS,
    CassandraHistoryStore,
    migrate,
    network_replication,
    open_cassandra_history,
    simple_replication,
)

MakeStore = Callable[[int], Awaitable[CassandraHistoryStore]]


async def cql(session: Session, query: str, params: Sequence[Any] = ()) -> list[Any]:
    return list(await asyncio.to_thread(session.execute, query, params))


@pytest.fixture
async def store(cassandra_history_factory: MakeStore) -> CassandraHistoryStore:
    return await cassandra_history_factory(1000)  # 1 s buckets


async def test_migration_creates_the_schema_once(
    store: CassandraHistoryStore, cassandra_session: Session
):
    ks = store.keyspace
    tables = await cql(
        cassandra_session,
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
        (ks,),
    )
    assert {t for (t,) in tables} == {
        "messages",
        "conversation_buckets",
        "conversations_by_user",
        "schema_migrations",
    }
    [(replication,)] = await cql(
        cassandra_session,
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
        (ks,),
    )
    assert replication["class"].endswith("SimpleStrategy")
    assert replication["replication_factor"] == "1"
    [(order,)] = await cql(
        cassandra_session,
        "SELECT clustering_order FROM system_schema.columns WHERE keyspace_name = %s"
        " AND table_name = 'conversation_buckets' AND column_name = 'bucket'",
        (ks,),
    )
    assert order == "desc"
    # Running it again applies nothing, records nothing twice and leaves data alone.
    await store.write([msg(CONV, T0)])
    assert await migrate(cassandra_session, ks, simple_replication(3)) == []
    assert await migrate(cassandra_session, ks, simple_replication(3)) == []
    versions = await cql(cassandra_session, f"SELECT version, name FROM {ks}.schema_migrations")
    assert sorted(v for v, _ in versions) == [m[0] for m in MIGRATIONS]
    assert [m.id for m in await store.page(CONV, limit=10)] == [msg(CONV, T0).id]
    [(replication,)] = await cql(
        cassandra_session,
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
        (ks,),
    )
    assert replication["replication_factor"] == "1"  # an existing keyspace keeps its own


async def test_keyspace_names_and_replication_are_checked(cassandra_session: Session):
    with pytest.raises(ValueError, match="keyspace"):
        await migrate(cassandra_session, "x; DROP KEYSPACE system", simple_replication())
    with pytest.raises(ValueError, match="replication"):
        await migrate(cassandra_session, "never_made", "SimpleStrategy")


async def test_a_replayed_write_does_not_duplicate(
    store: CassandraHistoryStore, cassandra_session: Session
):
    batch = [msg(CONV, T0 + i * 10, i) for i in range(30)]  # 300 ms: one bucket
    await store.write(batch)
    await store.write(batch)
    await store.write([*batch[10:20], *batch[10:20]])  # a repeat inside one batch, too
    rows = await cql(
        cassandra_session,
        f"SELECT id, body, client_id FROM {store.keyspace}.messages"
        " WHERE conv = %s AND bucket = %s",
        (CONV, T0 // 1000),
    )
    assert [r[0] for r in rows] == [m.id for m in batch]
    assert [(r[1], r[2]) for r in rows] == [(m.text, m.client_id) for m in batch]
    assert await store.get(CONV, batch[7].id) == batch[7]
    buckets = await cql(
        cassandra_session,
        f"SELECT bucket FROM {store.keyspace}.conversation_buckets WHERE conv = %s",
        (CONV,),
    )
    assert [b for (b,) in buckets] == [T0 // 1000]


async def test_newest_message_wins_the_conversation_list_whatever_the_write_order(
    store: CassandraHistoryStore, cassandra_session: Session
):
    older, newer = msg(CONV, T0), msg(CONV, T0 + 5000)
    await store.write([newer])
    await store.write([older])  # late: an archiver replaying, or a slow one
    for user in ("alice", "bob"):
        [summary] = await store.conversations(user, 10)
        assert (summary.last_id, summary.last_ts) == (newer.id, newer.ts)
    [(writetime,)] = await cql(
        cassandra_session,
        f"SELECT writetime(last_id) FROM {store.keyspace}.conversations_by_user "
        "WHERE user_id = 'alice' AND conv = %s",
        (CONV,),
    )
    assert writetime == newer.ts * 1000  # USING TIMESTAMP: the message's time in µs

    # Two messages in the same ms have equal write times; Cassandra then keeps the larger
    # value, which for ids is the later message: order-independent again.
    with_carol = dm_conversation("alice", "carol")
    first, second = msg(with_carol, T0 + 9000, 1), msg(with_carol, T0 + 9000, 2)
    await store.write([second])
    await store.write([first])
    assert (await store.conversations("carol", 10))[0].last_id == second.id
    assert [c.conv for c in await store.conversations("alice", 10)] == [with_carol, CONV]
    assert [c.conv for c in await store.conversations("alice", 1)] == [with_carol]


async def test_paging_walks_only_non_empty_buckets_both_ways(
    store: CassandraHistoryStore, cassandra_session: Session
):
    # Messages in seconds 0, 1, 5 and 9 (buckets of 1 s), none in between.
    seconds = (0, 1, 5, 9)
    messages = [msg(CONV, T0 + s * 1000 + k * 100, k) for s in seconds for k in range(4)]
    await store.write(messages[::-1])
    ids = [m.id for m in messages]
    buckets = await cql(
        cassandra_session,
        f"SELECT bucket FROM {store.keyspace}.conversation_buckets WHERE conv = %s",
        (CONV,),
    )
    assert [b for (b,) in buckets] == [T0 // 1000 + s for s in reversed(seconds)]

    assert [m.id for m in await store.page(CONV, limit=6)] == ids[-6:]  # crosses 9 -> 5
    assert [m.id for m in await store.page(CONV, limit=100)] == ids
    assert [m.id for m in await store.page(CONV, before=ids[9], limit=3)] == ids[6:9]
    assert [m.id for m in await store.page(CONV, after=ids[2], limit=3)] == ids[3:6]
    # Anchors inside an empty bucket (second 3) or before/after everything.
    gap = msg(CONV, T0 + 3000).id
    assert [m.id for m in await store.page(CONV, before=gap, limit=5)] == ids[3:8]
    assert [m.id for m in await store.page(CONV, after=gap, limit=5)] == ids[8:13]
    assert await store.page(CONV, before=ids[0], limit=5) == []
    assert await store.page(CONV, after=ids[-1], limit=5) == []
    assert [m.id for m in await store.page(CONV, after="0" * 24, limit=2)] == ids[:2]
    assert await store.page(CONV, before="f" * 24, limit=1) == [messages[-1]]


async def test_paging_reads_the_bucket_index_in_chunks(cassandra_history_factory: MakeStore):
    store = await cassandra_history_factory(1)  # 1 ms buckets: each message its own
    n = BUCKET_SCAN * 2 + 10
    messages = [msg(CONV, T0 + i * 3) for i in range(n)]
    await store.write(messages)
    ids = [m.id for m in messages]
    assert [m.id for m in await store.page(CONV, limit=n + 5)] == ids
    assert [m.id for m in await store.page(CONV, after="0" * 24, limit=n + 5)] == ids
    assert [m.id for m in await store.page(CONV, before=ids[-1], limit=n)] == ids[:-1]


async def test_long_messages_are_split_into_batches(store: CassandraHistoryStore):
    text = "é" * 100_000  # the longest message the product accepts
    messages = [msg(CONV, T0 + i, i, text=text) for i in range(2 * MAX_BATCH_CHARS // 100_000 + 3)]
    await store.write(messages)
    page = await store.page(CONV, limit=100)
    assert [m.id for m in page] == [m.id for m in messages]
    assert all(m.text == text for m in page)


@pytest.fixture
async def opened_keyspace(cassandra_session: Session) -> AsyncIterator[str]:
    yield "opened"
    await cql(cassandra_session, "DROP KEYSPACE IF EXISTS opened")


async def test_open_cassandra_history_connects_migrates_and_closes(
    cassandra_node: CassandraNode, opened_keyspace: str, cassandra_session: Session
):
    store = await open_cassandra_history(
        cassandra_node.contact_points,
        cassandra_node.port,
        opened_keyspace,
        network_replication(datacenter1=1),  # SimpleSnitch's data centre
        bucket_ms=60_000,
        local_dc="datacenter1",
    )
    try:
        await store.ping()
        await store.write([msg(CONV, T0), msg(CONV, T0 + 120_000)])
        assert len(await store.page(CONV, limit=10)) == 2
    finally:
        await store.close()
    [(replication,)] = await cql(
        cassandra_session,
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
        (opened_keyspace,),
    )
    assert replication["class"].endswith("NetworkTopologyStrategy")
    again = await open_cassandra_history(
        cassandra_node.contact_points, cassandra_node.port, opened_keyspace, simple_replication()
    )
    try:
        assert len(await again.page(CONV, limit=10)) == 2  # same data, nothing re-migrated
    finally:
        await again.close()


def test_stop_by_pidfile_leaves_other_processes_alone(tmp_path: Path):
    # A stale pidfile whose PID now belongs to someone else (here: this test process).
    (tmp_path / "cassandra.pid").write_text(f"{os.getpid()}\n")
    assert stop_pidfile(tmp_path) is None
    assert process_alive(os.getpid())
    assert not (tmp_path / "cassandra.pid").exists()


def test_node_runs_on_its_pid_and_ports(cassandra_node: CassandraNode):
    assert process_alive(cassandra_node.pid)
    assert (cassandra_node.data_dir / "cassandra.pid").read_text().strip() == str(
        cassandra_node.pid
    )
    assert cassandra_node.port != cassandra_node.storage_port
