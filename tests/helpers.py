"""Helpers for end-to-end tests."""

from __future__ import annotations

import itertools

import nats

from jetchat.client import log_in, sign_up
from jetchat.seed import PASSWORD, bulk_users  # noqa: F401 - used by the tests

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
