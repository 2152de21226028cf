"""Typing indicators: to online members only, never stored, never replayed, rate-limited."""

from __future__ import annotations

import asyncio

import pytest
from helpers import api, bulk_users

from core.model import dm_conversation
from core.protocol import TypingEvent
from jetchat_client import ChatClient


async def next_typing(client: ChatClient, timeout: float = 10) -> TypingEvent:
    """The next typing event (receipts also arrive as events; they are skipped)."""
    async with asyncio.timeout(timeout):
        while not isinstance(event := await client.next_event(), TypingEvent):
            pass
    return event


async def test_typing_reaches_online_members_and_is_never_replayed(spawn, pg_dsn):
    p1, p2 = spawn(), spawn()
    (alice, ta), (bob, tb), (carol, tc), (_, te) = await bulk_users(pg_dsn, "t", 4)
    group = (
        await api(p1.base_url, ta, "POST", "/v1/groups", {"name": "g", "members": [bob, carol]})
    ).json()
    conv = group["conv"]
    async with (
        ChatClient(p1.base_url, ta, cursor=0) as a,
        ChatClient(p2.base_url, tb, cursor=0) as b,
        ChatClient(p2.base_url, te, cursor=0) as e,
    ):
        for c in (a, b, e):
            await c.caught_up.wait()
        await a.typing(conv, "start")
        event = await next_typing(b)
        assert event == TypingEvent(conv, alice, "start", 5000)
        await a.typing(dm_conversation(alice, bob), "stop")
        assert await next_typing(b) == TypingEvent(dm_conversation(alice, bob), alice, "stop", 0)
        # a non-member may not type into the group
        await e.typing(conv, "start")
        assert (await e.next_error()).code == "forbidden"
        with pytest.raises(TimeoutError):
            await next_typing(a, timeout=0.3)  # the sender is not told of its own typing
    # carol was offline: on connecting she gets the group's messages, and no typing
    async with ChatClient(p1.base_url, tc, cursor=0) as c:
        await c.caught_up.wait()
        with pytest.raises(TimeoutError):
            await next_typing(c, timeout=0.5)


async def test_typing_is_rate_limited_per_device(spawn, pg_dsn):
    server = spawn(typing_per_s="0.1", typing_burst="3")
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "tr", 2)
    conv = dm_conversation(alice, bob)
    async with (
        ChatClient(server.base_url, ta, cursor=0) as a,
        ChatClient(server.base_url, tb, cursor=0) as b,
    ):
        await b.caught_up.wait()
        await a.caught_up.wait()
        for _ in range(10):
            await a.typing(conv)
        got = 0
        with pytest.raises(TimeoutError):
            while True:
                await next_typing(b, timeout=0.5)
                got += 1
        assert got == 3


async def test_typing_over_http_reaches_a_websocket_member(server, pg_dsn):
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "th", 2)
    conv = dm_conversation(alice, bob)
    async with ChatClient(server.base_url, tb, cursor=0) as b:
        await b.caught_up.wait()
        resp = await api(
            server.base_url, ta, "POST", f"/v1/conversations/{conv}/typing", {"state": "start"}
        )
        assert resp.status_code == 204
        assert await next_typing(b) == TypingEvent(conv, alice, "start", 5000)
