"""Idempotent sends, the length limit and bad frames, against a real server."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets
from helpers import device, inbox_count, new_user

from core.close import CloseCode
from jetchat_client import ApiError, ChatClient, send_http


async def test_same_client_id_twice_stores_one_message_and_returns_the_same_id(server, nats_url):
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    token = await device(url, alice)
    first = await send_http(url, token, bob, "once", "dup-1")
    again = await send_http(url, token, bob, "once", "dup-1")
    async with ChatClient(url, token, cursor=0) as a:  # and over WebSocket
        third = await a.send(bob, "once", client_id="dup-1")
    assert first == again == third
    assert await inbox_count(nats_url, bob) == 1
    assert await inbox_count(nats_url, alice) == 1


async def test_resend_after_the_duplicate_window_and_on_another_process(spawn, nats_url):
    p1 = spawn(duplicate_window_s="1")
    p2 = spawn(duplicate_window_s="1")
    alice, bob = await new_user(p1.base_url, "alice"), await new_user(p1.base_url, "bob")
    token = await device(p1.base_url, alice)
    first = await send_http(p1.base_url, token, bob, "hi", "late-resend")
    await asyncio.sleep(1.5)  # JetStream no longer remembers the Nats-Msg-Id
    again = await send_http(p2.base_url, token, bob, "hi", "late-resend")
    assert again == first
    assert await inbox_count(nats_url, bob) == 1


async def test_100000_characters_accepted_100001_rejected_and_not_stored(server, nats_url):
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    async with ChatClient(url, await device(url, alice), cursor=0) as a:
        ok = await a.send(bob, "é" * 99_999 + "😀")  # characters, not bytes
        assert ok.id
        with pytest.raises(ApiError) as info:
            await a.send(bob, "x" * 100_001, client_id="too-long")
        assert info.value.code == "message_too_long"
        with pytest.raises(ApiError) as info:
            await a.send(bob, "", client_id="empty")
        assert info.value.code == "empty_message"
        assert (await a.send(bob, "still open")).id > ok.id
    assert await inbox_count(nats_url, bob) == 2
    token = await device(url, alice)
    async with httpx.AsyncClient(base_url=url) as http:
        resp = await http.post(
            "/v1/messages",
            json={"client_id": "h", "to": bob, "text": "x" * 100_001},
            headers={"authorization": f"Bearer {token}"},
        )
    assert resp.status_code == 413 and resp.json()["code"] == "message_too_long"
    assert await inbox_count(nats_url, bob) == 2


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "malformed"),
        ('{"type":"dance"}', "unknown_type"),
        ('{"type":"send","to":"xyz"}', "malformed"),
        ('{"type":"send","client_id":"c","to":"x","text":"hi"}', "invalid_argument"),
        ("[]", "malformed"),
        (b"\x00\x01binary", "not_text"),
        ('{"type":"send","client_id":"c","to":"nobody_here","text":"hi"}', "unknown_recipient"),
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_stays_open(server, frame, code):
    url = server.base_url
    alice = await new_user(url, "alice")
    async with ChatClient(url, await device(url, alice), cursor=0) as a:
        await a.send_raw(frame)
        error = await a.next_error()
        assert error.code == code
        assert error.message
        assert (await a.send(alice, "note to self")).id  # still usable


async def test_a_frame_over_the_size_cap_closes_with_1009(server):
    url = server.base_url
    alice = await new_user(url, "alice")
    token = await device(url, alice)
    async with websockets.connect(
        url.replace("http", "ws") + "/v1/ws",
        additional_headers={"authorization": f"Bearer {token}"},
        max_size=None,
    ) as ws:
        await ws.recv()  # welcome
        await ws.send("x" * (4 * 100_000 + 8192))
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None and info.value.rcvd.code == CloseCode.MESSAGE_TOO_BIG
