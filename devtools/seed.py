"""Many users with a device each, straight into Postgres: for benchmarks and tests, where
signing up thousands through the API would spend most of the time hashing passwords."""

from __future__ import annotations

import itertools
import secrets
import time

import argon2
import psycopg

from core.ids import token_hash
from storage.postgres import to_timestamp

PASSWORD = "correct horse battery"  # noqa: S105 - the known password of seeded users
_batches = itertools.count()


async def bulk_users(pg_dsn: str, prefix: str, n: int) -> list[tuple[str, str]]:
    """``n`` users ``<prefix><batch>_<i>`` with one device each: ``[(user_id, token), ...]``.
    Their password is :data:`PASSWORD`."""
    password_hash = argon2.PasswordHasher().hash(PASSWORD)
    now = int(time.time() * 1000)
    created = []
    batch = next(_batches)
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn, conn.cursor() as cur:
        for i in range(n):
            user, token = f"{prefix}{batch}_{i}", secrets.token_urlsafe(32)
            await cur.execute(
                "INSERT INTO users (id, display_name, password_hash, created_at) "
                "VALUES (%s, %s, %s, %s)",
                (user, user, password_hash, to_timestamp(now)),
            )
            await cur.execute(
                "INSERT INTO devices (id, user_id, name, token_hash, created_at, expires_at) "
                "VALUES (%s, %s, 'bulk', %s, %s, %s)",
                (
                    secrets.token_hex(8),
                    user,
                    token_hash(token),
                    to_timestamp(now),
                    to_timestamp(now + 86_400_000),
                ),
            )
            created.append((user, token))
    return created
