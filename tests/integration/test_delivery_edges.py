"""Slow clients, cursors the inbox no longer covers, shutdown, and the operator endpoints."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import websockets
from helpers import device, new_user
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

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
        assert 'jetchat_slow_consumers_total{outcome="closed"} 1.0' in metrics


async def test_a_client_that_never_reads_is_cut_when_even_the_close_frame_cannot_go(spawn):
    """A raw socket that does the handshake and says hello, then never reads: after the send
    timeout the server tries to close with 4008; the close frame cannot be written either
    (it waits behind the unread frames), so after the close timeout the TCP connection is cut.
    The client never sees a close frame."""
    server = spawn(send_timeout_s="1", close_timeout_s="1", outbox_bytes="65536")
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    bob_token = await device(url, bob)
    async with ChatClient(url, await device(url, alice), cursor=0) as a:
        big = "x" * 60_000
        # 7.2 MB for Bob: more than the kernel holds (a 4 MB send buffer at most by default,
        # and Bob's receive buffer is made tiny below) plus the outbox and asyncio's buffer
        for i in range(120):
            await a.send(bob, f"{i} {big}")
    loop = asyncio.get_running_loop()
    client = ClientProtocol(parse_uri(url.replace("http", "ws") + "/v1/ws"), max_size=None)
    request = client.connect()
    request.headers["Authorization"] = f"Bearer {bob_token}"
    client.send_request(request)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", server.port))
    try:
        await loop.sock_sendall(sock, b"".join(client.data_to_send()))
        while not any(isinstance(e, Frame) for e in client.events_received()):
            client.receive_data(await loop.sock_recv(sock, 65536))  # the response and welcome
        client.send_text(b'{"type":"hello","cursor":0}')
        await loop.sock_sendall(sock, b"".join(client.data_to_send()))
        # Bob reads nothing now; the server gives up within 1 s (send) + 1 s (close)
        async with httpx.AsyncClient() as http:
            async with asyncio.timeout(20):
                while 'jetchat_slow_consumers_total{outcome="cut"} 1.0' not in (
                    metrics := (await http.get(f"{url}/metrics")).text
                ):
                    await asyncio.sleep(0.2)
        assert 'outcome="closed"} 1.0' not in metrics
        # What Bob finds when he reads at last: frames, then the end of the stream, with no
        # close frame (the server's was dropped with the unwritten data)
        async with asyncio.timeout(20):
            while True:
                try:
                    data = await loop.sock_recv(sock, 1 << 20)
                except ConnectionResetError:
                    break
                if not data:
                    break
                client.receive_data(data)
        frames = [e for e in client.events_received() if isinstance(e, Frame)]
        assert frames and frames[0].opcode is Opcode.TEXT
        assert client.close_rcvd is None
    finally:
        sock.close()
    assert "Traceback" not in server.log_tail()


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
                "worker:inbox-resync": "ok",
                "worker:token-expiry": "ok",
                "worker:archiver": "ok",
                "worker:archiver-lag": "ok",
            },
        }
        metrics = (await http.get("/metrics")).text
        assert "jetchat_messages_sent_total" in metrics
        assert 'jetchat_worker_up{worker="archiver"} 1.0' in metrics
        spec = (await http.get("/schema/openapi.json")).json()
        assert {"/v1/accounts", "/v1/sessions", "/v1/messages"} <= set(spec["paths"])
