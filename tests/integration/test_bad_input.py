"""What a client gets for frames and bodies that are not what the protocol says:
invalid UTF-8 closes with 1007, deep nesting is ``malformed`` before anything decodes it, and an
oversized HTTP body is 413."""

from __future__ import annotations

import httpx
import msgspec
import pytest
import websockets
from helpers import device, new_user
from websockets.frames import Frame, Opcode

from core.close import CloseCode

DEEP = b'{"x":' + b"[" * 1000 + b"]" * 1000 + b',"type":"ping"}'


async def connect(url: str, token: str) -> websockets.ClientConnection:
    ws = await websockets.connect(
        url.replace("http", "ws") + "/v1/ws",
        additional_headers={"authorization": f"Bearer {token}"},
    )
    assert msgspec.json.decode(await ws.recv())["type"] == "welcome"
    return ws


async def test_deep_nesting_is_malformed_and_the_socket_stays_open(server):
    url = server.base_url
    ws = await connect(url, await device(url, await new_user(url, "deep")))
    await ws.send(DEEP.decode())
    error = msgspec.json.decode(await ws.recv())
    assert (error["type"], error["code"]) == ("error", "malformed")
    assert "nested deeper than 32" in error["message"]
    await ws.send('{"type":"ping"}')
    assert msgspec.json.decode(await ws.recv()) == {"type": "pong"}
    await ws.close()
    assert "Traceback" not in server.log_tail()


@pytest.mark.parametrize("fragmented", [False, True])
async def test_invalid_utf8_in_a_text_frame_closes_with_1007(server, fragmented):
    url = server.base_url
    ws = await connect(url, await device(url, await new_user(url, "utf8")))
    payload = b'{"type":"ping","x":"\xff\xfe"}'
    # the bad bytes in the last fragment when fragmented
    if fragmented:
        ws.protocol.send_frame(Frame(Opcode.TEXT, payload[:10], fin=False))
        ws.protocol.send_frame(Frame(Opcode.CONT, payload[10:]))
    else:
        ws.protocol.send_frame(Frame(Opcode.TEXT, payload))
    ws.send_data()
    with pytest.raises(websockets.ConnectionClosed) as info:
        await ws.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == CloseCode.INVALID_PAYLOAD
    assert "UnicodeDecodeError" not in server.log_tail()


async def test_http_bodies_deeply_nested_or_too_large_are_refused(server):
    url = server.base_url
    token = await device(url, await new_user(url, "bodies"))
    auth = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, headers=auth) as http:
        for path in ("/v1/messages", "/v1/groups", "/v1/accounts"):
            resp = await http.post(path, content=DEEP)
            assert resp.status_code == 400, path
            assert resp.json() == {
                "code": "malformed",
                "message": "JSON nested deeper than 32 arrays or objects",
            }
        big = b'{"client_id":"c","to":"x","text":"' + b"x" * 404_100 + b'"}'
        resp = await http.post("/v1/messages", content=big)
        assert resp.status_code == 413
        assert resp.json()["code"] == "message_too_long"
        assert set(resp.json()) == {"code", "message"}
    assert "Traceback" not in server.log_tail()
