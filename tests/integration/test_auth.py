"""Accounts and tokens: every rejection with the right status, over HTTP and WebSocket."""

from __future__ import annotations

import asyncio
import time

import httpx
import msgspec
import pytest
import websockets
from helpers import PASSWORD, device, new_user

from core.close import CloseCode
from jetchat_client import ApiError, ChatClient, log_in, sign_up


def ws_url(base: str) -> str:
    return base.replace("http", "ws") + "/v1/ws"


async def ws_status(base: str, headers: dict[str, str], url: str | None = None) -> int:
    """The status of a refused upgrade, after checking its body is our JSON error."""
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url or ws_url(base), additional_headers=headers):
            pass
    response = info.value.response
    assert response.headers["content-type"] == "application/json"
    assert set(msgspec.json.decode(response.body)) == {"code", "message"}
    return response.status_code


async def test_sign_up_log_in_profile_devices_log_out(server):
    url = server.base_url
    alice = await new_user(url, "alice")
    with pytest.raises(ApiError) as info:
        await sign_up(url, alice, PASSWORD)
    assert (info.value.status, info.value.code) == (409, "username_taken")
    with pytest.raises(ApiError) as info:
        await sign_up(url, "No Spaces!", PASSWORD)
    assert (info.value.status, info.value.code) == (422, "invalid_argument")

    laptop = await log_in(url, alice, PASSWORD, "laptop")
    phone = await log_in(url, alice, PASSWORD, "phone")
    async with httpx.AsyncClient(base_url=url) as http:
        auth = {"authorization": f"Bearer {laptop.token}"}
        me = (await http.get("/v1/me", headers=auth)).json()
        assert me["id"] == alice and me["display_name"] == "Alice"
        devices = (await http.get("/v1/devices", headers=auth)).json()
        assert [d["name"] for d in devices] == ["laptop", "phone"]
        assert (await http.get(f"/v1/users/{alice}", headers=auth)).status_code == 200
        assert (await http.get("/v1/users/nobody_at_all", headers=auth)).status_code == 404
        # revoke the phone from the laptop
        resp = await http.delete(f"/v1/devices/{phone.device_id}", headers=auth)
        assert resp.status_code == 204
        phone_auth = {"authorization": f"Bearer {phone.token}"}
        resp = await http.get("/v1/me", headers=phone_auth)
        assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"
        # log out the laptop itself
        assert (await http.delete("/v1/sessions/current", headers=auth)).status_code == 204
        assert (await http.get("/v1/me", headers=auth)).status_code == 401
        assert await ws_status(url, auth) == 401


async def test_wrong_password_and_unknown_user_look_the_same(server):
    url = server.base_url
    alice = await new_user(url, "alice")
    for user, password in ((alice, "wrong password"), ("nobody_at_all", PASSWORD)):
        with pytest.raises(ApiError) as info:
            await log_in(url, user, password)
        assert (info.value.status, info.value.code) == (401, "bad_credentials")


async def test_no_token_or_a_bad_token(server):
    url = server.base_url
    async with httpx.AsyncClient(base_url=url) as http:
        resp = await http.get("/v1/me")
        assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"
        resp = await http.get("/v1/me", headers={"authorization": "Bearer forged"})
        assert resp.status_code == 401
        resp = await http.post("/v1/messages", json={"client_id": "c", "to": "x", "text": "t"})
        assert resp.status_code == 401
    assert await ws_status(url, {}) == 401
    assert await ws_status(url, {"authorization": "Bearer forged"}) == 401


async def test_expired_token_is_rejected(spawn):
    server = spawn(token_ttl_s="1")
    url = server.base_url
    alice = await new_user(url, "alice")
    token = await device(url, alice)
    await asyncio.sleep(1.2)
    auth = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url) as http:
        resp = await http.get("/v1/me", headers=auth)
    assert resp.status_code == 401 and "expired" in resp.json()["message"]
    assert await ws_status(url, auth) == 401


async def test_origin_allowlist_at_the_upgrade(spawn):
    server = spawn(ws_allowed_origins="https://app.example")
    url = server.base_url
    alice = await new_user(url, "alice")
    token = await device(url, alice)
    auth = {"authorization": f"Bearer {token}"}
    assert await ws_status(url, {**auth, "origin": "https://evil.example"}) == 403
    async with websockets.connect(
        ws_url(url), additional_headers=auth, origin="https://app.example"
    ):
        pass
    # a token in the query string works for browsers, which cannot set headers
    async with ChatClient(url, token) as c:
        assert c.connected.is_set()
    async with websockets.connect(ws_url(url) + f"?token={token}") as ws:
        assert '"welcome"' in await ws.recv()
    # WebSockets are served at /v1/ws only
    assert await ws_status(url, auth, url.replace("http", "ws") + "/v1/other") == 404


async def test_revoking_a_device_closes_its_open_websocket_on_any_process(spawn):
    p1, p2 = spawn(), spawn()
    alice = await new_user(p1.base_url, "alice")
    laptop = await log_in(p1.base_url, alice, PASSWORD, "laptop")
    phone = await log_in(p1.base_url, alice, PASSWORD, "phone")
    c = ChatClient(p1.base_url, phone.token, cursor=0, reconnect=False)
    await c.connect()
    await c.caught_up.wait()
    async with httpx.AsyncClient(base_url=p2.base_url) as http:  # revoked from the other process
        auth = {"authorization": f"Bearer {laptop.token}"}
        assert (
            await http.delete(f"/v1/devices/{phone.device_id}", headers=auth)
        ).status_code == 204
    async with asyncio.timeout(5):
        while not c.close_codes:
            await asyncio.sleep(0.02)
    assert c.close_codes == [CloseCode.REVOKED]
    await c.close()


async def test_a_client_that_stops_answering_pings_is_closed(spawn):
    server = spawn(ws_ping_interval_s="0.3", ws_ping_timeout_s="0.3")
    url = server.base_url
    alice = await new_user(url, "alice")
    ws = await websockets.connect(
        ws_url(url), additional_headers={"authorization": f"Bearer {await device(url, alice)}"}
    )
    await ws.recv()
    ws.transport.pause_reading()  # a dead peer: it never reads the server's pings

    async def open_connections() -> str:
        async with httpx.AsyncClient(base_url=url) as http:
            metrics = (await http.get("/metrics")).text
        return next(
            line for line in metrics.splitlines() if line.startswith("jetchat_connections{")
        )

    assert (await open_connections()).endswith(" 1.0")
    async with asyncio.timeout(5):
        while not (await open_connections()).endswith(" 0.0"):
            await asyncio.sleep(0.1)
    ws.transport.abort()


async def test_an_open_socket_and_a_pending_poll_end_when_their_token_expires(spawn):
    # a socket opened before its token expired used to keep sending after it
    server = spawn(token_ttl_s="2")
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    login = await log_in(url, alice, PASSWORD, "phone")
    auth = {"authorization": f"Bearer {login.token}"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        async with websockets.connect(ws_url(url), additional_headers=auth) as ws:
            assert '"welcome"' in await ws.recv()
            await ws.send(f'{{"type":"send","client_id":"c1","to":"{bob}","text":"in time"}}')
            assert '"sent"' in await ws.recv()
            # a poll of the same device, pending after the message's copy in its own inbox
            cursor = (await http.get("/v1/poll?timeout=0", headers=auth)).json()["cursor"]
            poll = asyncio.ensure_future(
                http.get(f"/v1/poll?cursor={cursor}&timeout=20", headers=auth)
            )
            with pytest.raises(websockets.ConnectionClosed) as info:
                async with asyncio.timeout(10):
                    while True:
                        await ws.recv()
            closed_ms = time.time() * 1000
            assert info.value.rcvd is not None and info.value.rcvd.code == CloseCode.REVOKED
            assert "expired" in info.value.rcvd.reason
            assert login.expires_at <= closed_ms < login.expires_at + 1500
            with pytest.raises(websockets.ConnectionClosed):
                await ws.send(f'{{"type":"send","client_id":"c2","to":"{bob}","text":"late"}}')
        resp = await poll
        assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"
        assert time.time() * 1000 < login.expires_at + 1500
        body = {"client_id": "c3", "to": bob, "text": "late"}
        assert (await http.post("/v1/messages", json=body, headers=auth)).status_code == 401
    assert await ws_status(url, auth) == 401


async def test_a_pending_poll_of_a_revoked_device_answers_401(spawn):
    p1, p2 = spawn(), spawn()
    alice = await new_user(p1.base_url, "alice")
    laptop = await log_in(p1.base_url, alice, PASSWORD, "laptop")
    phone = await log_in(p1.base_url, alice, PASSWORD, "phone")
    async with httpx.AsyncClient(timeout=30) as http:
        poll = asyncio.ensure_future(
            http.get(
                f"{p1.base_url}/v1/poll?timeout=20",
                headers={"authorization": f"Bearer {phone.token}"},
            )
        )
        await asyncio.sleep(0.5)  # pending
        assert not poll.done()
        resp = await http.delete(  # revoked from the other process
            f"{p2.base_url}/v1/devices/{phone.device_id}",
            headers={"authorization": f"Bearer {laptop.token}"},
        )
        assert resp.status_code == 204
        async with asyncio.timeout(5):
            resp = await poll
    assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"


async def test_a_token_in_the_query_is_taken_by_the_websocket_and_the_poll_only(server):
    # tokens in URLs end up in proxy logs and browser history
    url = server.base_url
    alice = await new_user(url, "alice")
    token = await device(url, alice)
    async with httpx.AsyncClient(base_url=url) as http:
        resp = await http.get(f"/v1/me?token={token}")
        assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"
        resp = await http.get("/v1/devices", params={"token": token})
        assert resp.status_code == 401
        resp = await http.get("/v1/poll", params={"token": token, "timeout": 0})
        assert resp.status_code == 200, resp.text
    async with websockets.connect(ws_url(url) + f"?token={token}") as ws:
        assert '"welcome"' in await ws.recv()
