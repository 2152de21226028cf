"""Every HTTP error is ``{code, message}`` in plain words, a plain GET to the WebSocket's path says
what went wrong, a bug answers 500 with a request id found in the log, and every JSON answer
ends with a newline."""

from __future__ import annotations

import re

import httpx
import psycopg
import pytest
import websockets
from helpers import device, new_user

BAD_PARAMETERS = [
    ("/v1/poll?cursor=abc", "cursor: expected an integer, got 'abc'"),
    ("/v1/poll?timeout=soon", "timeout: expected a number, got 'soon'"),
    ("/v1/conversations?limit=", "limit: expected an integer, got ''"),
    ("/v1/presence", "users: missing (query parameter)"),
]
BAD_BODIES = [
    (b"{not json", "the body is not valid JSON: object keys must be strings (byte 1)"),
    (b"", "the body is missing: send a JSON object"),
    (b"[]", "the body: expected an object, got a list"),
    (b'{"client_id": 7, "to": "xyz", "text": "t"}', "client_id: expected a string, got an integer"),
    (b'{"to": "xyz", "text": "t"}', "client_id: missing"),
]


def plain(body: dict[str, str]) -> bool:
    """No Python or Litestar internals: reprs of enums, objects, validation dumps."""
    message = body["message"]
    return not re.search(r"<\w+|ParamType|'source'|Validation failed|\{'", message)


async def test_bad_parameters_and_bodies_are_said_in_plain_words(server):
    url = server.base_url
    token = await device(url, await new_user(url, "errors"))
    auth = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=auth) as http:
        for path, message in BAD_PARAMETERS:
            resp = await http.get(path)
            assert resp.status_code == 422, path
            assert resp.json() == {"code": "invalid_argument", "message": message}
        for content, message in BAD_BODIES:
            resp = await http.post(
                "/v1/messages", content=content, headers={"content-type": "application/json"}
            )
            assert resp.status_code == 400, content
            assert resp.json() == {"code": "malformed", "message": message}
        unknown = await http.get("/v1/no-such-route")
        assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
        nested = await http.post("/v1/groups", json={"name": "g", "members": [1]})
        assert nested.json()["message"] == "members[0]: expected a string, got an integer"
        for resp in (unknown, nested):
            assert set(resp.json()) == {"code", "message"} and plain(resp.json())


async def test_a_websocket_get_without_its_upgrade_says_to_long_poll(spawn):
    """What a client behind a proxy that strips ``Upgrade`` sees."""
    server = spawn()
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{server.base_url}/v1/ws")
    assert resp.status_code == 426
    assert resp.headers["upgrade"] == "websocket"
    body = resp.json()
    assert body["code"] == "upgrade_required"
    assert "Upgrade" in body["message"] and "/v1/poll" in body["message"]
    # with its upgrade, the same path is the WebSocket
    token = await device(server.base_url, await new_user(server.base_url, "upgrade"))
    ws_url = server.base_url.replace("http", "ws") + "/v1/ws"
    headers = {"authorization": f"Bearer {token}"}
    async with websockets.connect(ws_url, additional_headers=headers) as ws:
        assert ws.response.status_code == 101
    # a process that does not serve WebSockets knows no such path
    no_ws = spawn(frontends="longpoll,http")
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{no_ws.base_url}/v1/ws")).status_code == 404


async def test_an_unexpected_error_is_500_with_a_request_id_in_the_log(server, pg_dsn):
    url = server.base_url
    token = await device(url, await new_user(url, "bug"))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a bug in the making
        conn.execute("ALTER TABLE groups RENAME TO groups_gone")
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{url}/v1/groups", headers={"authorization": f"Bearer {token}"})
    assert resp.status_code == 500
    request_id = resp.headers["x-request-id"]
    assert resp.json() == {
        "code": "internal",
        "message": f"internal error (request id {request_id})",
    }
    log = server.log_tail()
    assert request_id in log and "Traceback" in log and "groups" in log


async def test_json_answers_end_with_a_newline(spawn):
    server = spawn(poll_timeout_s="0.05")
    url = server.base_url
    token = await device(url, await new_user(url, "newline"))
    auth = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url) as http:
        answers = [
            await http.get("/healthz"),
            await http.get("/readyz"),
            await http.get("/v1/poll", headers=auth),
            await http.get("/v1/me", headers=auth),
            await http.get("/v1/me"),  # 401
            await http.get("/v1/poll?cursor=abc", headers=auth),  # 422
            await http.get("/nowhere"),  # 404 from the router
            await http.get("/v1/ws"),  # 426
            await http.get("/schema/openapi.json"),
        ]
        for resp in answers:
            assert resp.headers["content-type"].endswith("json"), resp.url
            assert resp.content.endswith(b"}\n"), resp.url
            assert int(resp.headers["content-length"]) == len(resp.content), resp.url
        # a 204 stays empty
        resp = await http.delete("/v1/contacts/nobody", headers=auth)
        assert resp.status_code == 204 and resp.content == b""
    # the WebSocket's refusals are JSON answers too
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url.replace("http", "ws") + "/v1/ws"):
            pass
    refusal = info.value.response
    assert refusal.status_code == 401 and refusal.body.endswith(b"}\n")
