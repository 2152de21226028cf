"""Slow clients, cursors the inbox no longer covers, shutdown, and the operator endpoints."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets
from helpers import device, new_user

from core.close import CloseCode
from jetchat_client import ChatClient


async def test_a_client_that_stops_reading_is_closed_as_slow_consumer(spawn):
    server = spawn(send_timeout_s="1", outbox_bytes="65536", live_buffer="16")
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    bob_token = await device(url, bob)
    # Bob reads nothing until Alice is done: with max_queue=1 the client library stops
    # reading the socket after one frame, and the receive buffer is tiny.
    ws = await websockets.connect(
        url.replace("http", "ws") + "/v1/ws",
        additional_headers={"authorization": f"Bearer {bob_token}"},
        max_queue=1,
        max_size=None,
    )
    await ws.send('{"type":"hello","cursor":0}')
    async with ChatClient(url, await device(url, alice), cursor=0) as a:
        big = "x" * 60_000
        for i in range(400):  # 24 MB for Bob, more than the kernel's socket buffers hold
            await a.send(bob, f"{i} {big}")
        await asyncio.sleep(2)  # the server's writer waits on a full socket beyond 1 s
        with pytest.raises(websockets.ConnectionClosed) as info:
            async with asyncio.timeout(20):
                while True:
                    await ws.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == CloseCode.SLOW_CONSUMER
        # reconnecting with the cursor still gets everything
        async with ChatClient(url, bob_token, cursor=0) as b:
            got = [(await b.next_message(timeout=20)).message.text.split()[0] for _ in range(400)]
            assert got == [str(i) for i in range(400)]
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{url}/metrics")).text
        assert "jetchat_slow_consumers_total 1.0" in metrics


async def test_cursor_beyond_the_inbox_gets_resync_needed(server):
    url = server.base_url
    alice = await new_user(url, "alice")
    async with ChatClient(url, await device(url, alice), cursor=10_000) as c:
        async with asyncio.timeout(5):
            while c.resync_needed is None:
                await asyncio.sleep(0.02)
        assert c.resync_needed.cursor == 10_000
        assert not c.caught_up.is_set()


async def test_cursor_older_than_the_retention_gets_resync_needed(spawn):
    server = spawn(inbox_retention_s="1")
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    bob_token = await device(url, bob)
    async with ChatClient(url, await device(url, alice), cursor=0) as a:
        await a.send(bob, "one")
        await a.send(bob, "two")
        async with ChatClient(url, bob_token, cursor=0) as b:
            first = await b.next_message()
        await asyncio.sleep(2.5)  # retention removes both messages
        await a.send(bob, "three")
    async with ChatClient(url, bob_token, cursor=first.seq) as b:
        async with asyncio.timeout(5):
            while b.resync_needed is None:
                await asyncio.sleep(0.02)
        assert b.resync_needed.cursor == first.seq
        assert b._inbox.empty()  # nothing replayed past a hole: no silent skip


async def test_sigterm_drains_connections_and_exits_cleanly(spawn):
    server = spawn()
    url = server.base_url
    alice = await new_user(url, "alice")
    c = ChatClient(url, await device(url, alice), cursor=0, reconnect=False)
    await c.connect()
    await c.caught_up.wait()
    assert server.stop() == 0
    assert "jetchat stopped" in server.log_tail()
    async with asyncio.timeout(5):
        while not c.close_codes:
            await asyncio.sleep(0.02)
    assert c.close_codes[0] in (CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART)
    await c.close()


async def test_health_readiness_metrics_and_openapi(server):
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = (await http.get("/readyz")).json()
        assert ready == {
            "ready": True,
            "checks": {
                "nats": "ok",
                "jetstream": "ok",
                "postgres": "ok",
                "history": "ok",
                # the supervised workers (ws-keepalive comes with the first WebSocket)
                "worker:presence": "ok",
                "worker:cursor-flush": "ok",
                "worker:archiver": "ok",
                "worker:archiver-lag": "ok",
            },
        }
        metrics = (await http.get("/metrics")).text
        assert "jetchat_messages_sent_total" in metrics
        assert 'jetchat_worker_up{worker="archiver"} 1.0' in metrics
        spec = (await http.get("/schema/openapi.json")).json()
        assert {"/v1/accounts", "/v1/sessions", "/v1/messages"} <= set(spec["paths"])
