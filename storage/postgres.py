"""Postgres adapters for the core's storage ports (psycopg 3, async, pooled).

Times cross this edge as int ms since the epoch (the core's unit) and are stored as
``timestamptz``, converted exactly (no float round trip) by :func:`to_timestamp` and
:func:`from_timestamp`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from core.model import Device, User
from storage.migrate import migrate

__all__ = [
    "DEFAULT_POOL_MAX_SIZE",
    "DEFAULT_POOL_OPEN_TIMEOUT",
    "Pool",
    "PostgresAccountStore",
    "from_timestamp",
    "migrate",
    "open_pool",
    "to_timestamp",
]

Pool: TypeAlias = AsyncConnectionPool[AsyncConnection[TupleRow]]

DEFAULT_POOL_MAX_SIZE = 10
"""Connections per process at most. Account queries are single short statements; ten keep a
frontend process busy without crowding Postgres's default ``max_connections`` (100) when
several processes share a server."""

DEFAULT_POOL_OPEN_TIMEOUT = 10.0
"""Seconds :func:`open_pool` waits for the first connection before raising."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_timestamp(ms: int) -> datetime:
    """ms since the epoch -> an aware datetime, exactly."""
    return _EPOCH + ms * _MS


def from_timestamp(at: datetime) -> int:
    """An aware datetime -> ms since the epoch (sub-ms parts are dropped; we never store any)."""
    return (at - _EPOCH) // _MS


async def open_pool(
    dsn: str,
    max_size: int = DEFAULT_POOL_MAX_SIZE,
    *,
    open_timeout: float = DEFAULT_POOL_OPEN_TIMEOUT,
) -> Pool:
    """Open a pool of 1 to ``max_size`` connections and wait until one works.

    Raises ``psycopg_pool.PoolTimeout`` if no connection could be made within ``open_timeout`` s.
    The caller closes it (``await pool.close()``, or ``async with pool``)."""
    pool: Pool = AsyncConnectionPool(dsn, min_size=1, max_size=max_size, open=False)
    try:
        await pool.open(wait=True, timeout=open_timeout)
    except BaseException:
        await pool.close()
        raise
    return pool


def _device(row: tuple[Any, ...]) -> Device:
    """A ``devices`` row (columns in table order) -> Device."""
    id_, user_id, name, token_hash, created_at, expires_at, revoked_at = row
    return Device(
        id=id_,
        user_id=user_id,
        name=name,
        token_hash=bytes(token_hash),
        created_at=from_timestamp(created_at),
        expires_at=from_timestamp(expires_at),
        revoked_at=None if revoked_at is None else from_timestamp(revoked_at),
    )


class PostgresAccountStore:
    """:class:`core.ports.AccountStore` on Postgres (schema: ``migrations/0001_accounts.sql``).

    Each method is one statement in its own transaction, so each is atomic on its own."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def create_user(self, user: User) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                INSERT INTO users (id, display_name, password_hash, created_at)
                VALUES (%s, %s, %s, %s)
                ON CONFLICT (id) DO NOTHING
                """,
                (user.id, user.display_name, user.password_hash, to_timestamp(user.created_at)),
            )
            return cur.rowcount == 1

    async def get_user(self, user_id: str) -> User | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, display_name, password_hash, created_at FROM users WHERE id = %s",
                (user_id,),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        id_, display_name, password_hash, created_at = row
        return User(
            id=id_,
            display_name=display_name,
            password_hash=password_hash,
            created_at=from_timestamp(created_at),
        )

    async def add_device(self, device: Device) -> None:
        # A taken id or token hash raises psycopg.errors.UniqueViolation: both are fresh random
        # values, so a clash is a bug, not a condition to handle.
        async with self._pool.connection() as conn:
            await conn.execute(
                """
                INSERT INTO devices
                    (id, user_id, name, token_hash, created_at, expires_at, revoked_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s)
                """,
                (
                    device.id,
                    device.user_id,
                    device.name,
                    device.token_hash,
                    to_timestamp(device.created_at),
                    to_timestamp(device.expires_at),
                    None if device.revoked_at is None else to_timestamp(device.revoked_at),
                ),
            )

    async def device_by_token_hash(self, token_hash: bytes) -> Device | None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, user_id, name, token_hash, created_at, expires_at, revoked_at"
                " FROM devices WHERE token_hash = %s",
                (token_hash,),
            )
            row = await cur.fetchone()
        return None if row is None else _device(row)

    async def list_devices(self, user_id: str) -> list[Device]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT id, user_id, name, token_hash, created_at, expires_at, revoked_at
                FROM devices
                WHERE user_id = %s AND revoked_at IS NULL
                ORDER BY created_at, id
                """,
                (user_id,),
            )
            rows = await cur.fetchall()
        return [_device(row) for row in rows]

    async def revoke_device(self, user_id: str, device_id: str, at_ms: int) -> bool:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                UPDATE devices SET revoked_at = %s
                WHERE id = %s AND user_id = %s AND revoked_at IS NULL
                """,
                (to_timestamp(at_ms), device_id, user_id),
            )
            return cur.rowcount == 1

    async def ping(self) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("SELECT 1")
