"""The abuse limits against real servers: two ``jetchat serve`` processes sharing one real
Redis enforce one budget; Redis down refuses log-ins and lets chatting go on. Small limits
through JETCHAT_* settings; the only times asserted are those the limits define."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import msgspec
import pytest
import websockets
from helpers import PASSWORD, device, new_user

from devtools.redis import RedisServer


def ws_url(base: str) -> str:
    return base.replace("http", "ws", 1) + "/v1/ws"


async def log_in_status(url: str, user: str, password: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url) as http:
        return await http.post("/v1/sessions", json={"username": user, "password": password})


async def send(url: str, token: str, to: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url) as http:
        return await http.post(
            "/v1/messages",
            json={"client_id": uuid.uuid4().hex, "to": to, "text": "hi"},
            headers={"authorization": f"Bearer {token}"},
        )


async def test_log_in_lockout_is_shared_by_every_process(spawn, redis_url):
    limits = {"redis_url": redis_url, "login_failures_per_account": "10", "login_lockout_s": "60"}
    a, b = spawn(**limits), spawn(**limits)
    alice = await new_user(a.base_url, "alice")
    for _ in range(10):
        resp = await log_in_status(a.base_url, alice, "wrong password")
        assert resp.status_code == 401 and resp.json()["code"] == "bad_credentials"
    resp = await log_in_status(b.base_url, alice, "wrong password")
    assert resp.status_code == 429 and resp.json()["code"] == "rate_limited"
    assert 55 <= int(resp.headers["retry-after"]) <= 60
    # locked means locked: the right password waits too (guessing must not go on)
    resp = await log_in_status(b.base_url, alice, PASSWORD)
    assert resp.status_code == 429
    # another account is not locked by alice's failures
    bob = await new_user(b.base_url, "bob")
    assert (await log_in_status(a.base_url, bob, PASSWORD)).status_code == 201


async def test_a_successful_log_in_forgets_the_failures(spawn, redis_url):
    limits = {"redis_url": redis_url, "login_failures_per_account": "3"}
    a, b = spawn(**limits), spawn(**limits)
    alice = await new_user(a.base_url, "alice")
    for _ in range(2):
        assert (await log_in_status(a.base_url, alice, "wrong password")).status_code == 401
    assert (await log_in_status(b.base_url, alice, PASSWORD)).status_code == 201
    for _ in range(2):
        assert (await log_in_status(b.base_url, alice, "wrong password")).status_code == 401
    assert (await log_in_status(a.base_url, alice, PASSWORD)).status_code == 201


async def test_sends_per_user_are_counted_over_every_process(spawn, redis_url):
    limits = {"redis_url": redis_url, "sends_per_user": "5", "send_window_s": "60"}
    a, b = spawn(**limits), spawn(**limits)
    alice, bob = await new_user(a.base_url, "alice"), await new_user(a.base_url, "bob")
    laptop, phone = await device(a.base_url, alice, "laptop"), await device(b.base_url, alice)
    for url, token in [(a.base_url, laptop), (b.base_url, phone)] * 2 + [(a.base_url, laptop)]:
        assert (await send(url, token, bob)).status_code == 200
    resp = await send(b.base_url, phone, bob)
    assert resp.status_code == 429 and resp.json()["code"] == "rate_limited"
    assert 1 <= int(resp.headers["retry-after"]) <= 12  # one send per 12 s on average

    # over a WebSocket: an error frame answering the send, and the socket stays open
    async with websockets.connect(
        ws_url(a.base_url), additional_headers={"authorization": f"Bearer {laptop}"}
    ) as ws:
        await ws.recv()  # welcome
        await ws.send(
            msgspec.json.encode(
                {"type": "send", "client_id": "c1", "to": bob, "text": "hi"}
            ).decode()
        )
        frame = msgspec.json.decode(await ws.recv())
        assert frame["type"] == "error" and frame["code"] == "rate_limited"
        assert frame["ref"] == "c1" and 0 < frame["retry_after_ms"] <= 12_000
        await ws.send('{"type":"ping"}')
        assert msgspec.json.decode(await ws.recv())["type"] == "pong"


async def test_connections_per_user_over_every_process(spawn, redis_url):
    limits = {"redis_url": redis_url, "connections_per_user": "2"}
    a, b = spawn(**limits), spawn(**limits)
    alice = await new_user(a.base_url, "alice")
    tokens = [await device(a.base_url, alice, f"d{i}") for i in range(3)]

    def connect(url: str, token: str) -> websockets.connect:
        return websockets.connect(
            ws_url(url), additional_headers={"authorization": f"Bearer {token}"}
        )

    first = await connect(a.base_url, tokens[0])
    second = await connect(b.base_url, tokens[1])
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(a.base_url, tokens[2]):
            pass
    response = refused.value.response
    assert response.status_code == 429 and "retry-after" in response.headers
    assert msgspec.json.decode(response.body)["code"] == "rate_limited"
    await second.close()
    for _ in range(100):  # the close is counted once the server saw it
        try:
            third = await connect(a.base_url, tokens[2])
            break
        except websockets.InvalidStatus:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("a closed connection was still counted")
    await third.close()
    await first.close()


async def test_redis_down_refuses_log_in_and_lets_sends_pass(spawn, tmp_path: Path):
    redis = RedisServer(tmp_path / "redis").start()
    try:
        server = spawn(redis_url=redis.url, redis_timeout_s="0.5")
        alice, bob = (
            await new_user(server.base_url, "alice"),
            await new_user(server.base_url, "bob"),
        )
        token = await device(server.base_url, alice)
    finally:
        redis.stop()
    resp = await log_in_status(server.base_url, alice, PASSWORD)
    assert resp.status_code == 503 and resp.json()["code"] == "unavailable"
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        resp = await http.post("/v1/accounts", json={"username": "carol_x", "password": PASSWORD})
        assert resp.status_code == 503
    for _ in range(3):
        assert (await send(server.base_url, token, bob)).status_code == 200
    async with websockets.connect(
        ws_url(server.base_url), additional_headers={"authorization": f"Bearer {token}"}
    ) as ws:
        assert msgspec.json.decode(await ws.recv())["type"] == "welcome"
    assert server.log_tail().count("rate limiter unavailable: send") == 1  # once, not per send


async def test_polls_per_device_in_process(spawn):
    server = spawn(polls_per_device="2", poll_window_s="60")
    alice = await new_user(server.base_url, "alice")
    token = await device(server.base_url, alice)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        auth = {"authorization": f"Bearer {token}"}
        for _ in range(2):
            assert (await http.get("/v1/poll?timeout=0", headers=auth)).status_code == 200
        resp = await http.get("/v1/poll?timeout=0", headers=auth)
        assert resp.status_code == 429 and resp.json()["code"] == "rate_limited"
        assert 1 <= int(resp.headers["retry-after"]) <= 30


async def test_sign_ups_per_address_ignore_forwarded_headers(spawn):
    server = spawn(signups_per_address="2")
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        for i in range(3):
            resp = await http.post(
                "/v1/accounts",
                json={"username": f"carol_{i}", "password": PASSWORD},
                headers={"x-forwarded-for": f"203.0.113.{i}"},  # any client can write it
            )
            assert resp.status_code == (201 if i < 2 else 429), resp.text
        assert resp.json()["code"] == "rate_limited"
        assert 1_000 <= int(resp.headers["retry-after"]) <= 1_800  # one sign-up per 30 min
