"""Helpers for end-to-end tests."""

from __future__ import annotations

import itertools

import httpx
import nats

from core.model import ChatMessage, dm_conversation
from devtools.seed import PASSWORD, bulk_users  # noqa: F401 - used by the tests
from jetchat_client import log_in, sign_up

_users = itertools.count()

T0 = 1_790_000_000_000
"""A fixed "now" (ms) for history-store tests."""
CONV = dm_conversation("alice", "bob")
"""The conversation the history-store tests write to."""


def msg(conv: str, ts: int, n: int = 0, text: str = "") -> ChatMessage:
    """A 1:1 message of ``conv`` at ``ts`` (``n`` tells apart messages of one millisecond),
    with the id the server would give it."""
    sender, to = conv.split(".")[1:3]
    return ChatMessage(
        id=f"{ts:012x}{n:04x}{0xABCDEF01:08x}",
        conv=conv,
        sender=sender,
        sender_device="dev",
        to=to,
        text=text or f"at {ts} #{n}",
        ts=ts,
        client_id=f"c{ts}-{n}",
    )


async def new_user(base_url: str, name: str) -> str:
    """Sign up a fresh user ``<name><n>``; returns its id."""
    user = f"{name}{next(_users)}"
    await sign_up(base_url, user, PASSWORD, name.title())
    return user


async def device(base_url: str, user: str, name: str = "phone") -> str:
    """Log a new device in; returns its token."""
    return (await log_in(base_url, user, PASSWORD, name)).token


async def api(url: str, token: str, method: str, path: str, json: object = None) -> httpx.Response:
    """One HTTP call to the jetchat API at ``url`` as the device whose token is ``token``."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        return await http.request(
            method, path, json=json, headers={"authorization": f"Bearer {token}"}
        )


async def inbox_count(nats_url: str, user: str) -> int:
    """How many messages the user's inbox subject holds in JetStream (read with nats-py, the
    way an operator would, not through jetchat)."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info("CHAT_INBOX", subjects_filter=f"chat.inbox.{user}")
        return (info.state.subjects or {}).get(f"chat.inbox.{user}", 0)
    finally:
        await nc.close()
