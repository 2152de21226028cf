"""Hostile input, over HTTP and WebSocket, against a real server: ids with NATS subject
characters, NUL and control characters in texts, names and parameters. Each gets its
documented code (``invalid_argument`` 422 unless said), nothing is written, the socket stays
open, and no answer is a 500 or a close 1011."""

from __future__ import annotations

import json

import httpx
import pytest
from helpers import api, device, inbox_count, new_user

from jetchat_client import ChatClient

ZEROS_1 = "000000000000000000000001"
F24 = "f" * 24


async def test_hostile_http_requests_get_a_documented_4xx_and_write_nothing(server, nats_url):
    url = server.base_url
    me, peer = await new_user(url, "host"), await new_user(url, "peer")
    token = await device(url, me)
    dm = f"dm.{min(me, peer)}.{max(me, peer)}"
    mine = f"dm.{me}"
    cases: list[tuple[str, str, object, int, str]] = [
        ("POST", "/v1/messages", {"client_id": "n1", "to": peer, "text": "a\x00b"}, 422, "text"),
        ("POST", "/v1/messages", {"client_id": "n\x00", "to": peer, "text": "x"}, 422, "client_id"),
        ("POST", "/v1/messages", {"client_id": "n2", "to": f"{peer}\x00", "text": "x"}, 422, "to"),
        ("POST", "/v1/messages", {"client_id": "n3", "to": peer, "text": "\x1b[2J"}, 422, "text"),
        ("POST", f"/v1/conversations/{mine}.%3E/read", {"up_to": F24}, 422, "conv"),
        ("POST", f"/v1/conversations/{mine}.%2A/read", {"up_to": F24}, 422, "conv"),
        ("POST", f"/v1/conversations/{dm}%20/read", {"up_to": F24}, 422, "conv"),
        ("POST", f"/v1/conversations/{dm}%00/read", {"up_to": F24}, 422, "conv"),
        ("POST", f"/v1/conversations/{mine}.b%20c/read", {"up_to": ZEROS_1}, 422, "conv"),
        ("POST", f"/v1/conversations/{dm}/read", {"up_to": "zz"}, 422, "up_to"),
        ("POST", f"/v1/conversations/{mine}.b%20c/typing", {"state": "start"}, 422, "conv"),
        ("GET", f"/v1/conversations/{mine}.%3E/receipts", None, 422, "conv"),
        ("GET", f"/v1/conversations/{dm}%00/messages", None, 422, "conv"),
        ("GET", f"/v1/conversations/{dm}/messages?before=a%00b", None, 422, "before"),
        ("GET", "/v1/groups/a%00b", None, 422, "group_id"),
        ("PATCH", "/v1/groups/a%00b", {"name": "x"}, 422, "group_id"),
        ("GET", "/v1/users/a%00b", None, 422, "user_id"),
        ("PUT", "/v1/contacts/a%00b", None, 422, "user_id"),
        ("DELETE", "/v1/contacts/a%00b", None, 422, "user_id"),
        ("DELETE", "/v1/devices/a%00b", None, 422, "device_id"),
        ("DELETE", "/v1/devices/a%00", None, 422, "device_id"),
        ("GET", "/v1/presence?users=a%00b", None, 422, "users"),
        ("GET", "/v1/presence?users=ab", None, 422, "users"),  # a user id has 3 or more
        ("POST", "/v1/groups", {"name": "a\x00b"}, 422, "name"),
        ("POST", "/v1/groups", {"name": "   "}, 422, "name"),
        ("POST", "/v1/groups", {"name": "g", "members": ["a\x00b"]}, 422, "members"),
        ("PATCH", "/v1/me", {"hide_presence": "yes"}, 400, "hide_presence"),  # a wrong type
    ]
    failures = []
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"}) as h:
        for method, path, body, status, field in cases:
            resp = await h.request(method, path, json=body)
            got = resp.json()
            want = "invalid_argument" if status == 422 else "malformed"
            if resp.status_code != status or got.get("code") != want or field not in got["message"]:
                failures.append(f"{method} {path} {body!r}: {resp.status_code} {got}")
    assert failures == []
    assert await inbox_count(nats_url, peer) == 0
    assert await inbox_count(nats_url, me) == 0
    assert (await api(url, token, "GET", "/v1/groups")).json() == []
    assert (await api(url, token, "GET", "/v1/contacts")).json() == []


async def test_hostile_names_at_sign_up_and_log_in(server):
    url = server.base_url
    async with httpx.AsyncClient(base_url=url) as h:
        for body, field in [
            (
                {"username": "nul_name", "password": "p" * 8, "display_name": "a\x00b"},
                "display_name",
            ),
            ({"username": "ctl_name", "password": "p" * 8, "display_name": "a\nb"}, "display_name"),
            ({"username": "a\x00b", "password": "p" * 8}, "username"),
            ({"username": "short_pw", "password": "p" * 7}, "password"),
        ]:
            resp = await h.post("/v1/accounts", json=body)
            assert (resp.status_code, resp.json()["code"]) == (422, "invalid_argument"), body
            assert field in resp.json()["message"]
        user = await new_user(url, "names")
        resp = await h.post(
            "/v1/sessions", json={"username": user, "password": "x" * 8, "device_name": "a\x00"}
        )
        assert (resp.status_code, resp.json()["code"]) == (422, "invalid_argument")
        assert "device_name" in resp.json()["message"]
        # a username of no user's shape is a wrong username, as ever (no hint, no store query)
        resp = await h.post("/v1/sessions", json={"username": "a\x00b", "password": "x" * 8})
        assert (resp.status_code, resp.json()["code"]) == (401, "bad_credentials")
        # names are stored trimmed
        resp = await h.post(
            "/v1/accounts",
            json={"username": f"{user}t", "password": "p" * 8, "display_name": " T "},
        )
        assert resp.status_code == 201 and resp.json()["display_name"] == "T"
    token = await device(url, user)
    assert (await api(url, token, "GET", "/v1/devices")).json()[0]["name"] == "phone"


def _frames(me: str, peer: str) -> list[tuple[dict[str, object], str]]:
    dm = f"dm.{min(me, peer)}.{max(me, peer)}"
    mine = f"dm.{me}"
    return [
        ({"type": "send", "client_id": "n1", "to": peer, "text": "a\x00b"}, "text"),
        ({"type": "send", "client_id": "n\x00", "to": peer, "text": "x"}, "client_id"),
        ({"type": "send", "client_id": "n2", "to": "a\x00", "text": "x"}, "to"),
        ({"type": "read", "conv": f"{mine}.>", "up_to": F24}, "conv"),
        ({"type": "read", "conv": f"{mine}.*", "up_to": F24}, "conv"),
        ({"type": "read", "conv": f"{dm} ", "up_to": F24}, "conv"),
        ({"type": "read", "conv": f"{dm}\x00", "up_to": F24}, "conv"),
        ({"type": "read", "conv": dm, "up_to": "a\x00"}, "up_to"),
        ({"type": "typing", "conv": f"{dm} ", "state": "start"}, "conv"),
        ({"type": "typing", "conv": f"{mine}.b c", "state": "start"}, "conv"),
        ({"type": "receipts", "ref": "r", "conv": f"{mine}.>"}, "conv"),
        ({"type": "history", "ref": "r", "conv": f"{dm}\x00"}, "conv"),
        ({"type": "receipts", "ref": "r", "conv": "dm.a.b"}, "conv"),  # ids of 3 or more
        ({"type": "history", "ref": "r", "conv": dm, "around": "a\x00b"}, "around"),
        ({"type": "presence", "ref": "r", "users": ["a\x00b"]}, "users"),
    ]


@pytest.mark.parametrize("transport", ["ws"])
async def test_hostile_frames_get_invalid_argument_and_the_socket_stays_open(
    server, nats_url, transport
):
    url = server.base_url
    me, peer = await new_user(url, "wshost"), await new_user(url, "wspeer")
    async with ChatClient(url, await device(url, me), cursor=0) as client:
        for frame, field in _frames(me, peer):
            await client.send_raw(json.dumps(frame))
            error = await client.next_error()
            assert (error.code, frame) == ("invalid_argument", frame)
            assert f"$.{field}" in error.message
        assert (await client.send(me, "still open")).id  # no 1011: the socket is usable
        assert await client.presence([peer]) is not None
    assert await inbox_count(nats_url, peer) == 0
    assert await inbox_count(nats_url, me) == 1  # the note to self only
