"""Groups end to end: membership, fanout, one order, catch-up, rules (real NATS, Postgres)."""

from __future__ import annotations

import asyncio

import msgspec
import nats
import pytest
from helpers import api, bulk_users, device, new_user

from jetchat_client import ApiError, ChatClient


async def group_log(nats_url: str, conv: str) -> list[dict]:
    """The group's timeline as JetStream holds it, in sequence order."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    out, seq = [], 0
    try:
        while True:
            try:
                msg = await js.get_msg(
                    "CHAT_GROUPS",
                    seq=seq + 1,
                    subject=f"chat.group.{conv[6:]}",
                    next=True,
                    direct=True,
                )
            except nats.js.errors.NotFoundError:
                return out
            out.append(msgspec.json.decode(msg.data))
            seq = msg.seq
    finally:
        await nc.close()


async def drain(client: ChatClient, n: int, timeout: float = 30) -> list:
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            got.append((await client.next_message()).message)
    return got


async def test_group_lifecycle_and_timeline_events(server):
    url = server.base_url
    alice, bob, carol = [await new_user(url, n) for n in ("alice", "bob", "carol")]
    ta, tb, tc = [await device(url, u) for u in (alice, bob, carol)]
    resp = await api(url, ta, "POST", "/v1/groups", {"name": "trip", "members": [bob]})
    assert resp.status_code == 201, resp.text
    group = resp.json()
    gid, conv = group["id"], group["conv"]
    assert {(m["user_id"], m["role"]) for m in group["members"]} == {
        (alice, "admin"),
        (bob, "member"),
    }
    # only admins add; bob is not one yet
    resp = await api(url, tb, "POST", f"/v1/groups/{gid}/members", {"user_id": carol})
    assert resp.status_code == 403 and resp.json()["code"] == "forbidden"
    assert (
        await api(url, ta, "POST", f"/v1/groups/{gid}/admins", {"user_id": bob})
    ).status_code == 201
    assert (
        await api(url, tb, "POST", f"/v1/groups/{gid}/members", {"user_id": carol})
    ).status_code == 201
    assert (await api(url, tc, "PATCH", f"/v1/groups/{gid}", {"name": "x"})).status_code == 403
    assert (await api(url, ta, "PATCH", f"/v1/groups/{gid}", {"name": "trip 2"})).json()[
        "name"
    ] == "trip 2"
    assert [g["id"] for g in (await api(url, tc, "GET", "/v1/groups")).json()] == [gid]
    assert (await api(url, tc, "DELETE", f"/v1/groups/{gid}/members/{carol}")).status_code == 204
    assert (await api(url, tc, "GET", f"/v1/groups/{gid}")).status_code == 404
    assert (await api(url, tc, "GET", "/v1/groups")).json() == []

    async with ChatClient(url, tb, cursor=0) as b:
        events = await drain(b, 5)
    assert [(e.event, e.target) for e in events] == [
        ("created", ""),
        ("promoted", bob),
        ("added", carol),
        ("renamed", ""),
        ("left", carol),
    ]
    assert events[2].text == f"{bob} added {carol}"
    assert all(e.conv == conv for e in events)
    timeline = await group_log(server.env["JETCHAT_NATS_URL"], conv)
    assert [e["id"] for e in timeline] == sorted(e["id"] for e in timeline)


async def test_five_senders_fifty_members_one_order(server, pg_dsn):
    url = server.base_url
    members = await bulk_users(pg_dsn, "m", 50)
    owner_token = members[0][1]
    resp = await api(
        url, owner_token, "POST", "/v1/groups", {"name": "big", "members": [u for u, _ in members]}
    )
    conv = resp.json()["conv"]
    clients = [ChatClient(url, token, cursor=0) for _, token in members]
    await asyncio.gather(*(c.connect() for c in clients))
    await asyncio.gather(*(c.caught_up.wait() for c in clients))

    async def talk(client: ChatClient, n: int) -> list[str]:
        return [(await client.send(conv, f"{id(client)} {i}")).id for i in range(n)]

    sent = await asyncio.gather(*(talk(clients[i], 20) for i in range(5)))
    sent_ids = {i for ids in sent for i in ids}
    # each member gets the creation event and the 100 messages
    await asyncio.gather(*(drain(c, 101) for c in clients))
    views = [[m.id for m in c.conversation(conv)] for c in clients]
    assert all(v == views[0] for v in views)
    assert sent_ids <= set(views[0]) and len(views[0]) == 101
    # the one order is the group's sequence: ids follow it
    timeline = await group_log(server.env["JETCHAT_NATS_URL"], conv)
    assert [e["id"] for e in timeline] == views[0]
    await asyncio.gather(*(c.close() for c in clients))


async def test_one_message_reaches_500_members_on_two_processes(spawn, pg_dsn):
    p1, p2 = spawn(max_group_members="500"), spawn(max_group_members="500")
    members = await bulk_users(pg_dsn, "w", 500)
    owner_token = members[0][1]
    resp = await api(
        p1.base_url,
        owner_token,
        "POST",
        "/v1/groups",
        {"name": "all", "members": [u for u, _ in members]},
    )
    assert resp.status_code == 201, resp.text
    conv = resp.json()["conv"]
    clients = [
        ChatClient((p1, p2)[i % 2].base_url, token, cursor=0)
        for i, (_, token) in enumerate(members)
    ]
    for start in range(0, 500, 50):
        await asyncio.gather(*(c.connect() for c in clients[start : start + 50]))
    await asyncio.gather(*(drain(c, 1) for c in clients))  # the creation event
    sent = await clients[1].send(conv, "hello, everyone")
    got = await asyncio.gather(*(drain(c, 1) for c in clients))
    assert {g[0].id for g in got} == {sent.id}
    await asyncio.gather(*(c.close() for c in clients))


async def test_offline_member_catches_up_200_in_order(server, pg_dsn):
    url = server.base_url
    (_, ta), (bob, tb) = await bulk_users(pg_dsn, "o", 2)
    conv = (await api(url, ta, "POST", "/v1/groups", {"name": "g", "members": [bob]})).json()[
        "conv"
    ]
    b = ChatClient(url, tb, cursor=0)
    await b.connect()
    await drain(b, 1)
    await b.close()
    async with ChatClient(url, ta, cursor=0) as a:
        sent = await asyncio.gather(*(a.send(conv, f"m{i}") for i in range(200)))
    b.reconnect, b._closing = True, False
    await b.connect()
    got = await drain(b, 200)
    await b.caught_up.wait()
    assert [m.id for m in got] == [s.id for s in sent]
    await asyncio.sleep(0.2)
    assert b._inbox.empty()
    await b.close()


async def test_non_members_full_groups_and_removed_members_are_refused(spawn, pg_dsn):
    server = spawn(max_group_members="3")
    url = server.base_url
    (_, ta), (bob, _), (carol, tc), (dave, td) = await bulk_users(pg_dsn, "r", 4)
    group = (
        await api(url, ta, "POST", "/v1/groups", {"name": "g", "members": [bob, carol]})
    ).json()
    gid, conv = group["id"], group["conv"]
    before = len(await group_log(server.env["JETCHAT_NATS_URL"], conv))
    async with ChatClient(url, td, cursor=0) as d:
        with pytest.raises(ApiError) as info:
            await d.send(conv, "let me in")
        assert info.value.code == "forbidden"
    resp = await api(url, ta, "POST", f"/v1/groups/{gid}/members", {"user_id": dave})
    assert resp.status_code == 409 and resp.json()["code"] == "group_full"
    assert len((await api(url, ta, "GET", f"/v1/groups/{gid}")).json()["members"]) == 3
    resp = await api(
        url, ta, "POST", "/v1/groups", {"name": "too big", "members": [bob, carol, dave]}
    )
    assert resp.status_code == 409
    assert (await api(url, ta, "DELETE", f"/v1/groups/{gid}/members/{carol}")).status_code == 204
    async with ChatClient(url, tc, cursor=None) as c:
        with pytest.raises(ApiError) as info:
            await c.send(conv, "still here?")
        assert info.value.code == "forbidden"
    timeline = await group_log(server.env["JETCHAT_NATS_URL"], conv)
    assert len(timeline) == before + 1 and timeline[-1]["event"] == "removed"


async def test_removed_then_readded_member_sees_only_their_stretches(server, pg_dsn):
    url = server.base_url
    (_, ta), (bob, tb) = await bulk_users(pg_dsn, "x", 2)
    group = (await api(url, ta, "POST", "/v1/groups", {"name": "g", "members": [bob]})).json()
    gid, conv = group["id"], group["conv"]
    async with ChatClient(url, ta, cursor=0) as a:
        m1 = await a.send(conv, "m1 bob is in")
        assert (await api(url, ta, "DELETE", f"/v1/groups/{gid}/members/{bob}")).status_code == 204
        m2 = await a.send(conv, "m2 bob is out")
        assert (
            await api(url, ta, "POST", f"/v1/groups/{gid}/members", {"user_id": bob})
        ).status_code == 201
        m3 = await a.send(conv, "m3 bob is back")
        async with ChatClient(url, tb, cursor=0) as b:
            got = await drain(b, 5)
            await b.caught_up.wait()
            texts = [m.text if not m.event else m.event for m in got]
            assert texts == ["created", "m1 bob is in", "removed", "added", "m3 bob is back"]
            async with asyncio.timeout(10):  # history, once archived
                while len(page := await b.history(conv, limit=100)) < 5:
                    await asyncio.sleep(0.05)
            assert m2.id not in {m.id for m in page}
            assert [m.id for m in page][1:2] == [m1.id] and page[-1].id == m3.id
            assert m2.id in {m.id for m in await a.history(conv, limit=100)}


async def test_group_resend_with_the_same_client_id_returns_the_original(server, pg_dsn):
    url = server.base_url
    (_, ta), (bob, tb) = await bulk_users(pg_dsn, "i", 2)
    conv = (await api(url, ta, "POST", "/v1/groups", {"name": "g", "members": [bob]})).json()[
        "conv"
    ]
    async with ChatClient(url, ta, cursor=0) as a:
        first = await a.send(conv, "once", client_id="g-1")
        again = await a.send(conv, "once", client_id="g-1")
    over_http = (
        await api(url, ta, "POST", "/v1/messages", {"client_id": "g-1", "to": conv, "text": "once"})
    ).json()
    assert first == again and over_http["id"] == first.id and over_http["conv"] == conv
    timeline = await group_log(server.env["JETCHAT_NATS_URL"], conv)
    assert [e.get("event") or e["text"] for e in timeline] == ["created", "once"]
    async with ChatClient(url, tb, cursor=0) as b:
        got = await drain(b, 2)
        await b.caught_up.wait()
        await asyncio.sleep(0.2)
        assert [m.id for m in got][1] == first.id and b._inbox.empty()
