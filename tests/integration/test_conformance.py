"""One conformance suite, run over every pair of transports: WebSocket both ways, long
polling (with plain HTTP sends) against WebSocket, and long polling on both sides."""

from __future__ import annotations

import asyncio

import pytest
from helpers import api, bulk_users

from core.model import dm_conversation
from core.protocol import PresenceEvent, TypingEvent
from jetchat_client import ApiError, ChatClient

PAIRS = [("ws", "ws"), ("longpoll", "ws"), ("longpoll", "longpoll")]


@pytest.fixture(params=PAIRS, ids=["ws-ws", "longpoll-ws", "longpoll-longpoll"])
def transports(request):
    return request.param


@pytest.fixture
def server(spawn):
    # short polls and presence TTL so that every case runs in seconds
    return spawn(poll_timeout_s="2", presence_ttl_s="3")


def client(server, token, transport, cursor=0) -> ChatClient:
    return ChatClient(server.base_url, token, cursor=cursor, transport=transport, poll_timeout=2)


async def drain(c: ChatClient, n: int) -> list:
    out = []
    async with asyncio.timeout(20):
        while len(out) < n:
            out.append((await c.next_message()).message)
    return out


async def next_of(c: ChatClient, kind: type, timeout: float = 10):
    async with asyncio.timeout(timeout):
        while not isinstance(event := await c.next_event(), kind):
            pass
    return event


async def test_one_to_one(server, pg_dsn, transports):
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "c1", 2)
    async with client(server, ta, transports[0]) as a, client(server, tb, transports[1]) as b:
        await b.caught_up.wait()
        sent = [await a.send(bob, f"a{i}") for i in range(10)]
        sent += [await b.send(alice, f"b{i}") for i in range(5)]
        await drain(a, 15)
        await drain(b, 15)
        conv = dm_conversation(alice, bob)
        assert [m.id for m in a.conversation(conv)] == [m.id for m in b.conversation(conv)]
        assert {m.id for m in b.conversation(conv)} == {s.id for s in sent}


async def test_group(server, pg_dsn, transports):
    (alice, ta), (bob, tb), (carol, tc) = await bulk_users(pg_dsn, "c2", 3)
    conv = (
        await api(server.base_url, ta, "POST", "/v1/groups", {"name": "g", "members": [bob, carol]})
    ).json()["conv"]
    async with (
        client(server, ta, transports[0]) as a,
        client(server, tb, transports[1]) as b,
        client(server, tc, transports[1]) as c,
    ):
        sent = await asyncio.gather(
            *(a.send(conv, f"a{i}") for i in range(5)), *(b.send(conv, f"b{i}") for i in range(5))
        )
        for x in (a, b, c):
            await drain(x, 11)  # the creation event and the ten messages
        views = [[m.id for m in x.conversation(conv)] for x in (a, b, c)]
        assert views[0] == views[1] == views[2]
        assert {s.id for s in sent} <= set(views[0])


async def test_offline_catch_up(server, pg_dsn, transports):
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "c3", 2)
    b = client(server, tb, transports[1])
    await b.connect()
    await b.caught_up.wait()
    await b.close()
    async with client(server, ta, transports[0]) as a:
        sent = [(await a.send(bob, f"m{i}")).id for i in range(50)]
    b2 = client(server, tb, transports[1], cursor=b.cursor)
    async with b2:
        assert [m.id for m in await drain(b2, 50)] == sent
        await b2.caught_up.wait()
        await asyncio.sleep(0.3)
        assert b2._inbox.empty()


async def test_receipts(server, pg_dsn, transports):
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "c4", 2)
    conv = dm_conversation(alice, bob)
    async with client(server, ta, transports[0]) as a, client(server, tb, transports[1]) as b:
        await a.caught_up.wait()
        sent = await a.send(bob, "read me")
        await drain(b, 1)
        await b.read(conv, sent.id)
        # the marks are durable state, whatever the transport (events are only live extras)
        async with asyncio.timeout(10):
            while (states := {s.user: s for s in await a.receipts(conv)}).get(bob) is None or (
                states[bob].read != sent.id
            ):
                await asyncio.sleep(0.05)
        assert states[bob].delivered == sent.id


async def test_typing(server, pg_dsn, transports):
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "c5", 2)
    conv = dm_conversation(alice, bob)
    async with client(server, ta, transports[0]) as a, client(server, tb, transports[1]) as b:
        await b.caught_up.wait()
        await asyncio.sleep(0.3)  # a long-polling bob has his next poll pending
        await a.typing(conv)
        assert await next_of(b, TypingEvent) == TypingEvent(conv, alice, "start", 5000)


async def test_presence(server, pg_dsn, transports):
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "c6", 2)
    await api(server.base_url, tb, "PUT", f"/v1/contacts/{alice}")
    async with client(server, tb, transports[1]) as b:
        await b.caught_up.wait()
        await asyncio.sleep(0.3)
        async with client(server, ta, transports[0]) as a:
            await a.caught_up.wait()
            event = await next_of(b, PresenceEvent)
            assert (event.user, event.online) == (alice, True)
            assert (await b.presence([alice]))[0].online is True


async def test_errors(server, pg_dsn, transports):
    (alice, ta), (bob, tb), (_, te) = await bulk_users(pg_dsn, "c7", 3)
    conv = (
        await api(server.base_url, ta, "POST", "/v1/groups", {"name": "g", "members": [bob]})
    ).json()["conv"]
    async with client(server, te, transports[0]) as e:
        with pytest.raises(ApiError) as info:
            await e.send(bob, "x" * 100_001)
        assert info.value.code == "message_too_long"
        with pytest.raises(ApiError) as info:
            await e.send(conv, "let me in")
        assert info.value.code == "forbidden"
        with pytest.raises(ApiError) as info:
            await e.history(conv)
        assert info.value.code == "forbidden"
        assert (await e.send(bob, "still fine")).id
