"""Delivered and read receipts, durable marks and unread counts (real NATS, Postgres)."""

from __future__ import annotations

import asyncio

import httpx
from helpers import api, bulk_users

from core.model import ReceiptState, dm_conversation
from core.protocol import ReceiptEvent
from jetchat_client import ChatClient


async def receipt_events(client: ChatClient, n: int) -> list[ReceiptEvent]:
    out = []
    async with asyncio.timeout(10):
        while len(out) < n:
            event = await client.next_event()
            if isinstance(event, ReceiptEvent):
                out.append(event)
    return out


async def test_receipts_reach_both_sender_devices_live_and_after_being_offline(server, pg_dsn):
    url = server.base_url
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "rc", 2)
    async with httpx.AsyncClient(base_url=url) as http:  # a second device for alice
        ta2 = (
            await http.post(
                "/v1/sessions", json={"username": alice, "password": "correct horse battery"}
            )
        ).json()["token"]
    conv = dm_conversation(alice, bob)
    async with ChatClient(url, ta, cursor=0) as a1, ChatClient(url, ta2, cursor=0) as a2:
        for c in (a1, a2):
            await c.caught_up.wait()
        sent = await a1.send(bob, "did you get it?")
        async with ChatClient(url, tb, cursor=0) as b:
            await b.next_message()  # bob's device has it and acks it
            for a in (a1, a2):
                assert (await receipt_events(a, 1))[0] == ReceiptEvent(conv, bob, sent.id, "")
            await b.read(conv, sent.id)
            for a in (a1, a2):
                assert (await receipt_events(a, 1))[0] == ReceiptEvent(conv, bob, sent.id, sent.id)
    # alice offline while bob reads a second message: her devices see the state on return
    async with ChatClient(url, ta, cursor=None) as a1:
        second = await a1.send(bob, "and this one?")
    async with ChatClient(url, tb, cursor=None) as b:
        await b.next_message()
        await b.read(conv, second.id)
        await asyncio.sleep(0.3)
    async with ChatClient(url, ta2, cursor=None) as a2:
        states = await a2.receipts(conv)
    assert ReceiptState(bob, second.id, second.id) in states


async def test_reading_on_one_device_reads_on_the_others_and_unread_counts(server, pg_dsn):
    url = server.base_url
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "ru", 2)
    async with httpx.AsyncClient(base_url=url) as http:
        tb2 = (
            await http.post(
                "/v1/sessions", json={"username": bob, "password": "correct horse battery"}
            )
        ).json()["token"]
    conv = dm_conversation(alice, bob)
    async with ChatClient(url, ta, cursor=0) as a:
        sent = [await a.send(bob, f"m{i}") for i in range(3)]
    auth = {"authorization": f"Bearer {tb}"}
    async with httpx.AsyncClient(base_url=url) as http:
        async with asyncio.timeout(10):  # archived, so counted
            while (await http.get("/v1/conversations", headers=auth)).json()[0]["unread"] != 3:
                await asyncio.sleep(0.05)
        async with ChatClient(url, tb2, cursor=0) as b2:
            await b2.caught_up.wait()
            resp = await http.post(
                f"/v1/conversations/{conv}/read", json={"up_to": sent[1].id}, headers=auth
            )
            assert resp.status_code == 200 and resp.json()["read"] == sent[1].id
            event = (await receipt_events(b2, 1))[0]  # bob's other device is told
            assert (event.user, event.read) == (bob, sent[1].id)
        summary = (await http.get("/v1/conversations", headers=auth)).json()[0]
        assert (summary["read_up_to"], summary["unread"]) == (sent[1].id, 1)
        resp = await http.post(
            f"/v1/conversations/{conv}/read", json={"up_to": "nope"}, headers=auth
        )
        assert resp.status_code == 422


async def test_group_receipts_are_counted_per_member(server, pg_dsn):
    url = server.base_url
    (alice, ta), (bob, tb), (carol, tc), (_, te) = await bulk_users(pg_dsn, "rg", 4)
    conv = (
        await api(url, ta, "POST", "/v1/groups", {"name": "g", "members": [bob, carol]})
    ).json()["conv"]
    async with ChatClient(url, ta, cursor=0) as a:
        sent = await a.send(conv, "hello group")
        async with ChatClient(url, tb, cursor=0) as b, ChatClient(url, tc, cursor=0) as c:
            async with asyncio.timeout(10):
                while (await b.next_message()).message.id != sent.id:
                    pass
                while (await c.next_message()).message.id != sent.id:
                    pass
            await b.read(conv, sent.id)
            await asyncio.sleep(0.5)
        states = {s.user: s for s in await a.receipts(conv)}
    assert states[bob] == ReceiptState(bob, sent.id, sent.id)
    assert states[carol] == ReceiptState(carol, sent.id, "")
    delivered = sum(1 for s in states.values() if s.user != alice and s.delivered >= sent.id)
    read = sum(1 for s in states.values() if s.user != alice and s.read >= sent.id)
    assert (delivered, read) == (2, 1)
    resp = await api(url, te, "GET", f"/v1/conversations/{conv}/receipts")
    assert resp.status_code == 403
