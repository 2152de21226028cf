"""PostgresAccountStore and migrations against a real Postgres (the embedded one)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from servers import drop_database

from core.model import Device, User
from embedded import EmbeddedPostgres
from storage.migrate import load_migrations
from storage.postgres import (
    Pool,
    PostgresAccountStore,
    from_timestamp,
    migrate,
    open_pool,
    to_timestamp,
)

T0 = 1_700_000_000_123  # ms; not a whole second, to catch lossy conversions


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[Pool]:
    p = await open_pool(pg_dsn, max_size=4)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def store(pool: Pool) -> PostgresAccountStore:
    return PostgresAccountStore(pool)


def user(uid: str, at: int = T0) -> User:
    return User(id=uid, display_name=uid.title(), password_hash=f"$argon2id$x{uid}", created_at=at)


def device(did: str, uid: str, at: int = T0, revoked_at: int | None = None) -> Device:
    return Device(
        id=did,
        user_id=uid,
        name=f"{did} phone",
        token_hash=hashlib.sha256(did.encode()).digest(),
        created_at=at,
        expires_at=at + 30 * 86_400_000,
        revoked_at=revoked_at,
    )


def test_time_conversion_is_exact() -> None:
    for ms in (0, 1, T0, -1, 253_402_300_799_999):
        assert from_timestamp(to_timestamp(ms)) == ms


async def test_create_and_get_user(store: PostgresAccountStore) -> None:
    alice = user("alice")
    assert await store.create_user(alice) is True
    assert await store.get_user("alice") == alice
    assert await store.get_user("nobody") is None


async def test_taken_user_id_returns_false_and_changes_nothing(
    store: PostgresAccountStore,
) -> None:
    alice = user("alice")
    assert await store.create_user(alice)
    impostor = User(id="alice", display_name="Mallory", password_hash="x", created_at=T0 + 5)
    assert await store.create_user(impostor) is False
    assert await store.get_user("alice") == alice


async def test_device_round_trip_by_token_hash(store: PostgresAccountStore) -> None:
    await store.create_user(user("alice"))
    d = device("d1", "alice")
    await store.add_device(d)
    assert await store.device_by_token_hash(d.token_hash) == d
    assert await store.device_by_token_hash(hashlib.sha256(b"other").digest()) is None


async def test_device_with_revoked_at_round_trips(store: PostgresAccountStore) -> None:
    await store.create_user(user("alice"))
    d = device("d1", "alice", revoked_at=T0 + 7)
    await store.add_device(d)
    assert await store.device_by_token_hash(d.token_hash) == d
    assert await store.list_devices("alice") == []


async def test_duplicate_token_hash_is_rejected(store: PostgresAccountStore) -> None:
    await store.create_user(user("alice"))
    await store.add_device(device("d1", "alice"))
    clash = Device(
        id="d2",
        user_id="alice",
        name="x",
        token_hash=device("d1", "alice").token_hash,
        created_at=T0,
        expires_at=T0,
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        await store.add_device(clash)


async def test_device_of_unknown_user_is_rejected(store: PostgresAccountStore) -> None:
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        await store.add_device(device("d1", "ghost"))


async def test_list_devices_oldest_first_without_revoked_or_others(
    store: PostgresAccountStore,
) -> None:
    for uid in ("alice", "bob"):
        await store.create_user(user(uid))
    newest = device("d-new", "alice", at=T0 + 300)
    oldest = device("d-old", "alice", at=T0 + 100)
    middle = device("d-mid", "alice", at=T0 + 200)
    gone = device("d-gone", "alice", at=T0 + 150)
    for d in (newest, oldest, gone, middle, device("d-bob", "bob")):
        await store.add_device(d)
    assert await store.revoke_device("alice", "d-gone", T0 + 400)

    assert await store.list_devices("alice") == [oldest, middle, newest]
    assert await store.list_devices("nobody") == []


async def test_revoke_only_own_live_device(store: PostgresAccountStore) -> None:
    for uid in ("alice", "bob"):
        await store.create_user(user(uid))
    d = device("d1", "alice")
    await store.add_device(d)

    assert await store.revoke_device("bob", "d1", T0 + 1) is False
    assert await store.list_devices("alice") == [d]
    assert await store.revoke_device("alice", "nope", T0 + 1) is False

    assert await store.revoke_device("alice", "d1", T0 + 2) is True
    revoked = await store.device_by_token_hash(d.token_hash)
    assert revoked is not None and revoked.revoked_at == T0 + 2

    # Already revoked: no change, and the first revocation time stays.
    assert await store.revoke_device("alice", "d1", T0 + 3) is False
    again = await store.device_by_token_hash(d.token_hash)
    assert again is not None and again.revoked_at == T0 + 2


async def test_ping(store: PostgresAccountStore) -> None:
    await store.ping()


async def test_ping_raises_when_database_is_gone(
    postgres_server: EmbeddedPostgres, pg_dsn: str
) -> None:
    pool = await open_pool(pg_dsn, max_size=1)
    try:
        store = PostgresAccountStore(pool)
        await store.ping()
        # Drops the database and terminates the pool's connection to it.
        await drop_database(postgres_server.dsn, str(conninfo_to_dict(pg_dsn)["dbname"]))
        with pytest.raises(psycopg.OperationalError):
            await store.ping()
    finally:
        await pool.close()


def test_migrations_ship_in_the_package() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations][:1] == [1]
    assert migrations[0].name == "0001_accounts.sql"
    assert b"CREATE TABLE users" in migrations[0].sql


async def _tables(dsn: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        return {row[0] for row in await cur.fetchall()}


async def test_migrate_twice_is_a_no_op(pg_blank_dsn: str) -> None:
    pool = await open_pool(pg_blank_dsn, max_size=1)
    try:
        everything = [m.version for m in load_migrations()]
        assert await migrate(pool) == everything
        assert await migrate(pool) == []
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [row[0] for row in await cur.fetchall()] == everything
    finally:
        await pool.close()
    assert {"users", "devices", "schema_migrations"} <= await _tables(pg_blank_dsn)


async def test_concurrent_migrate_applies_once(pg_blank_dsn: str) -> None:
    pools = [await open_pool(pg_blank_dsn, max_size=1) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(p) for p in pools))
    finally:
        for p in pools:
            await p.close()
    everything = [m.version for m in load_migrations()]
    assert sorted(results) == [[], [], everything]
    assert {"users", "devices", "schema_migrations"} <= await _tables(pg_blank_dsn)
