"""Helpers for end-to-end tests."""

from __future__ import annotations

import itertools

import nats

from jetchat.client import log_in, sign_up

PASSWORD = "correct horse battery"
_users = itertools.count()


async def new_user(base_url: str, name: str) -> str:
    """Sign up a fresh user ``<name><n>``; returns its id."""
    user = f"{name}{next(_users)}"
    await sign_up(base_url, user, PASSWORD, name.title())
    return user


async def device(base_url: str, user: str, name: str = "phone") -> str:
    """Log a new device in; returns its token."""
    return (await log_in(base_url, user, PASSWORD, name)).token


async def inbox_count(nats_url: str, user: str) -> int:
    """How many messages the user's inbox subject holds in JetStream (read with nats-py, the
    way an operator would, not through jetchat)."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info("CHAT_INBOX", subjects_filter=f"chat.inbox.{user}")
        return (info.state.subjects or {}).get(f"chat.inbox.{user}", 0)
    finally:
        await nc.close()


async def bulk_users(pg_dsn: str, prefix: str, n: int) -> list[tuple[str, str]]:
    """``n`` users with one device each, written straight into Postgres (hashing 500 passwords
    with argon2 would take most of a minute): ``[(user_id, token), ...]``."""
    import secrets
    import time

    import argon2
    import psycopg

    from core.ids import token_hash
    from storage.postgres import to_timestamp

    password_hash = argon2.PasswordHasher().hash(PASSWORD)
    now = int(time.time() * 1000)
    created = []
    base = next(_users)
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn, conn.cursor() as cur:
        for i in range(n):
            user, token = f"{prefix}{base}_{i}", secrets.token_urlsafe(32)
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
