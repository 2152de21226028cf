"""Presence from expiring heartbeats (real NATS KV with TTL and expiry markers)."""

from __future__ import annotations

import asyncio

import pytest
from helpers import api, bulk_users

from core.protocol import PresenceEvent, PresenceItem
from jetchat_client import ChatClient

TTL = 2  # s; production is 60 s with 30 s heartbeats


async def presence_events(client: ChatClient, timeout: float) -> list[PresenceEvent]:
    """Every presence event that arrives within ``timeout`` seconds."""
    out = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        try:
            event = await client.next_event(timeout=left)
        except TimeoutError:
            break
        if isinstance(event, PresenceEvent):
            out.append(event)
    return out


async def next_presence(client: ChatClient, timeout: float) -> PresenceEvent:
    """The first presence event within ``timeout`` seconds (other events are passed over)."""
    async with asyncio.timeout(timeout):
        while not isinstance(event := await client.next_event(timeout=timeout), PresenceEvent):
            pass
    return event


async def beating(client: ChatClient, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await client.ping()
        await asyncio.sleep(TTL / 4)


@pytest.fixture
def server(spawn):
    return spawn(presence_ttl_s=str(TTL))


async def test_silent_device_goes_offline_after_the_ttl_and_a_contact_is_told_once(server, pg_dsn):
    url = server.base_url
    (alice, ta), (_, tb) = await bulk_users(pg_dsn, "p", 2)
    assert (await api(url, tb, "PUT", f"/v1/contacts/{alice}")).status_code == 204
    async with ChatClient(url, tb, cursor=0) as b:
        await b.caught_up.wait()  # bob's connection watches from here on
        a = ChatClient(url, ta, cursor=0, reconnect=False)
        await a.connect()
        [online] = await presence_events(b, 1)
        assert (online.user, online.online) == (alice, True)
        assert (await b.presence([alice]))[0] == PresenceItem(alice, True, None)
        await a.close()  # no log-out: the connection just goes away, like a phone in a tunnel
        # within TTL + 2 s of the last heartbeat, and only once
        events = await presence_events(b, TTL + 2)
        assert [(e.user, e.online) for e in events] == [(alice, False)]
        assert events[0].last_seen is not None
        [item] = await b.presence([alice])
        assert (item.online, item.last_seen) == (False, events[0].last_seen)


async def test_reconnecting_within_the_ttl_causes_no_offline_event(server, pg_dsn):
    url = server.base_url
    (alice, ta), (_, tb) = await bulk_users(pg_dsn, "pr", 2)
    await api(url, tb, "PUT", f"/v1/contacts/{alice}")
    loop = asyncio.get_running_loop()
    async with ChatClient(url, tb, cursor=0) as b:
        await b.caught_up.wait()  # bob's connection watches from here on
        a = ChatClient(url, ta, cursor=0, reconnect=False)
        await a.connect()
        online = await next_presence(b, 5)
        assert (online.user, online.online) == (alice, True)
        # The TTL runs from the last heartbeat, not from the drop: beat now, so that the
        # drop below is what stands between two beats. (Counting from the close let the
        # reconnect land a full TTL after the connect's beat, racing the expiry.)
        beat_sent = loop.time()
        await a.ping()
        await a.presence([alice])  # answered after the ping: the beat is stored
        await a.close()
        await asyncio.sleep(TTL / 4)  # a short drop, then back
        async with ChatClient(url, ta, cursor=None) as a2:  # connecting beats
            silent = loop.time() - beat_sent
            assert silent < TTL * 3 / 4, f"silent for {silent:.2f} s: too slow to test a short drop"
            stop = asyncio.Event()
            task = asyncio.create_task(beating(a2, stop))
            # past the moment the old beat would have expired, and then some
            assert await presence_events(b, TTL + 2) == []  # no flap
            stop.set()
            await task


async def test_online_until_the_last_device_expires(server, pg_dsn):
    url = server.base_url
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "pd", 2)
    group = await api(url, ta, "POST", "/v1/groups", {"name": "g", "members": [bob]})
    assert group.status_code == 201  # group peers see each other's presence
    async with httpx_login(url, alice) as ta2, ChatClient(url, tb, cursor=0) as b:
        await b.caught_up.wait()
        phone = ChatClient(url, ta, cursor=0, reconnect=False)
        laptop = ChatClient(url, ta2, cursor=0, reconnect=False)
        await phone.connect()
        await laptop.connect()
        assert [e.online for e in await presence_events(b, 1)] == [True]
        stop = asyncio.Event()
        task = asyncio.create_task(beating(laptop, stop))
        await phone.close()
        assert await presence_events(b, TTL + 1.5) == []  # the laptop keeps alice online
        stop.set()
        await task
        await laptop.close()
        assert [e.online for e in await presence_events(b, TTL + 2)] == [False]


async def test_hidden_presence_is_never_seen_and_logout_is_immediate(server, pg_dsn):
    url = server.base_url
    (alice, ta), (bob, tb), (carol, tc) = await bulk_users(pg_dsn, "ph", 3)
    await api(url, tb, "PUT", f"/v1/contacts/{alice}")
    await api(url, tb, "PUT", f"/v1/contacts/{carol}")
    assert (await api(url, ta, "PATCH", "/v1/me", {"hide_presence": True})).status_code == 200
    async with ChatClient(url, tb, cursor=0) as b:
        await b.caught_up.wait()
        async with ChatClient(url, ta, cursor=0):
            assert await presence_events(b, 1) == []
            assert (await b.presence([alice]))[0] == PresenceItem(alice, None, None)
        assert await presence_events(b, TTL + 1.5) == []
        assert (await b.presence([alice]))[0] == PresenceItem(alice, None, None)
        # carol logs out: offline at once, not after the TTL
        async with ChatClient(url, tc, cursor=0):
            assert [e.online for e in await presence_events(b, 1)] == [True]
            assert (await api(url, tc, "DELETE", "/v1/sessions/current")).status_code == 204
            events = await presence_events(b, 1)
        assert [(e.user, e.online) for e in events] == [(carol, False)]
    # a user who is not a contact or group peer sees nothing either
    ((_, te),) = await bulk_users(pg_dsn, "pe", 1)
    async with ChatClient(url, te, cursor=0) as e:
        assert (await e.presence([bob]))[0] == PresenceItem(bob, None, None)


class httpx_login:
    """Log another device in for a user (async context manager giving its token)."""

    def __init__(self, url: str, user: str) -> None:
        self.url, self.user = url, user

    async def __aenter__(self) -> str:
        import httpx

        async with httpx.AsyncClient(base_url=self.url) as http:
            resp = await http.post(
                "/v1/sessions", json={"username": self.user, "password": "correct horse battery"}
            )
        return resp.json()["token"]

    async def __aexit__(self, *exc: object) -> None:
        pass
