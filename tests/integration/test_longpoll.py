"""Long polling through a real restrictive proxy, across processes, and at 1,000 at once."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import msgspec
import pytest
import websockets
from helpers import api, bulk_users, device, new_user
from proxy import TinyProxy

from core.protocol import PresenceEvent
from jetchat_client import ChatClient


@pytest.fixture
def proxy(tmp_path):
    if shutil.which("tinyproxy") is None:
        pytest.fail("tinyproxy is missing: ops/test installs it")
    p = TinyProxy(tmp_path / "proxy", idle_timeout_s=5).start()
    yield p
    p.stop()


async def test_behind_a_restrictive_proxy_websocket_fails_and_long_polling_works(
    spawn, proxy, pg_dsn
):
    server = spawn(poll_timeout_s="3")  # under the proxy's 5 s idle timeout
    url = server.base_url
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "px", 2)
    # a WebSocket through the proxy is refused
    with pytest.raises((websockets.WebSocketException, OSError)):
        async with websockets.connect(
            url.replace("http", "ws") + "/v1/ws",
            additional_headers={"authorization": f"Bearer {tb}"},
            proxy=proxy.url,
            open_timeout=5,
        ):
            pass
    # the client falls back to long polling through it, and chats with a WebSocket user
    behind = ChatClient(url, tb, cursor=0, transport="auto", proxy=proxy.url, poll_timeout=3)
    async with behind, ChatClient(url, ta, cursor=0) as a:
        await behind.caught_up.wait()
        assert behind.mode == "longpoll"
        sent = await a.send(bob, "through the proxy?")
        assert (await behind.next_message()).message.id == sent.id
        reply = await behind.send(alice, "yes, by long polling")
        got = await a.next_message()
        if got.message.id == sent.id:
            got = await a.next_message()
        assert got.message.id == reply.id
        # polls held for their full 3 s come back through the proxy too
        await asyncio.sleep(4)
        late = await a.send(bob, "after an idle poll")
        async with asyncio.timeout(10):
            while (await behind.next_message()).message.id != late.id:
                pass  # bob's own reply comes back to his inbox first


async def test_long_polls_spread_over_two_processes_lose_and_repeat_nothing(spawn, pg_dsn):
    p1, p2 = spawn(poll_timeout_s="1"), spawn(poll_timeout_s="1")
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "lp2", 2)
    got: list[str] = []
    done = asyncio.Event()

    async def poller() -> None:
        cursor, turn = 0, 0
        async with httpx.AsyncClient(timeout=10) as http:
            while not done.is_set():
                base = (p1, p2)[turn % 2].base_url  # every poll on the other process
                turn += 1
                resp = await http.get(
                    f"{base}/v1/poll",
                    params={"cursor": cursor, "timeout": 1},
                    headers={"authorization": f"Bearer {tb}"},
                )
                body = msgspec.json.decode(resp.content)
                got.extend(f["message"]["id"] for f in body["frames"] if f["type"] == "msg")
                cursor = body["cursor"]

    task = asyncio.create_task(poller())
    async with ChatClient(p1.base_url, ta, cursor=0) as a:
        sent = []
        for i in range(200):
            sent.append((await a.send(bob, f"m{i}")).id)
            if i % 20 == 0:
                await asyncio.sleep(0.05)
    async with asyncio.timeout(20):
        while len(got) < 200:
            await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)
    done.set()
    await task
    assert got == sent  # each once, in order


async def test_a_pending_poll_is_the_presence_heartbeat(spawn, pg_dsn):
    server = spawn(poll_timeout_s="1", presence_ttl_s="2")
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "lph", 2)
    await api(server.base_url, tb, "PUT", f"/v1/contacts/{alice}")
    async with ChatClient(server.base_url, tb, cursor=0) as b:
        await b.caught_up.wait()
        a = ChatClient(server.base_url, ta, cursor=0, transport="longpoll", poll_timeout=1)
        await a.connect()
        seen = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):  # more than twice the TTL, only polling
                while True:
                    event = await b.next_event()
                    if isinstance(event, PresenceEvent):
                        seen.append(event.online)
        assert seen == [True]
        await a.close()
        async with asyncio.timeout(6):
            while not isinstance(event := await b.next_event(), PresenceEvent):
                pass
        assert event.online is False


async def test_a_poll_whose_client_went_away_ends_at_once(spawn, pg_dsn):
    server = spawn(poll_timeout_s="60")
    [(_, token)] = await bulk_users(pg_dsn, "lpgone", 1)
    host, port = "127.0.0.1", server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /v1/poll?timeout=60 HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )

    async def pending() -> str:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            metrics = (await http.get("/metrics")).text
        return next(line for line in metrics.splitlines() if line.startswith("jetchat_pending_"))

    async with asyncio.timeout(5):
        while not (await pending()).endswith(" 1.0"):
            await asyncio.sleep(0.05)
    writer.close()  # nobody will read the answer: the server lets the poll go, not in 60 s
    async with asyncio.timeout(2):
        while not (await pending()).endswith(" 0.0"):
            await asyncio.sleep(0.05)


async def test_1000_pending_polls_each_answered_when_its_message_comes(spawn, pg_dsn):
    server = spawn(poll_timeout_s="20", max_group_members="500")
    url = server.base_url
    users = await bulk_users(pg_dsn, "k", 1000)
    owner = await new_user(url, "owner")
    owner_token = await device(url, owner)
    convs = []
    for half in (users[:499], users[499:998], users[998:]):
        resp = await api(
            url, owner_token, "POST", "/v1/groups", {"name": "g", "members": [u for u, _ in half]}
        )
        convs.append(resp.json()["conv"])
    # each user's first poll gets the creation event; the next one waits
    limits = httpx.Limits(max_connections=1100, max_keepalive_connections=1100)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def poll(token: str, cursor: int | None, timeout: float) -> dict:
            params = (
                {"timeout": timeout} if cursor is None else {"cursor": cursor, "timeout": timeout}
            )
            resp = await http.get(
                "/v1/poll", params=params, headers={"authorization": f"Bearer {token}"}
            )
            return msgspec.json.decode(resp.content)

        firsts = await asyncio.gather(*(poll(t, 0, 0) for _, t in users))
        loop = asyncio.get_running_loop()
        answered: dict[int, float] = {}

        async def wait(i: int, token: str, cursor: int) -> dict:
            body = await poll(token, cursor, 20)
            answered[i] = loop.time()
            return body

        pending = [
            asyncio.create_task(wait(i, t, f["cursor"]))
            for i, ((_, t), f) in enumerate(zip(users, firsts, strict=True))
        ]
        async with asyncio.timeout(30):
            while "jetchat_pending_polls 1000.0" not in (await http.get("/metrics")).text:
                await asyncio.sleep(0.1)
        sent_at = []
        for conv in convs:
            await api(
                url,
                owner_token,
                "POST",
                "/v1/messages",
                {"client_id": conv, "to": conv, "text": "hi"},
            )
            sent_at.append(loop.time())
        bodies = await asyncio.gather(*pending)
    assert all(any(f["type"] == "msg" for f in b["frames"]) for b in bodies)
    # every poll answered within 1 s of its group's message (the bound)
    group_of = [0] * 499 + [1] * 499 + [2] * 2
    late = [answered[i] - sent_at[group_of[i]] for i in range(1000)]
    assert max(late) < 1.0, f"slowest poll answered {max(late):.2f} s after its message"


async def test_frontends_run_apart_and_talk_through_the_same_core(spawn, pg_dsn):
    """One process only long-polls, another only serves WebSocket and HTTP."""
    poller = spawn(frontends="longpoll", poll_timeout_s="2")
    rest = spawn(frontends="ws,http")
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "fa", 2)
    async with httpx.AsyncClient() as http:
        assert (await http.post(f"{poller.base_url}/v1/messages", json={})).status_code == 404
        assert (await http.get(f"{rest.base_url}/v1/poll")).status_code == 404
    got = []
    async with ChatClient(rest.base_url, ta, cursor=0) as a:
        sent = await a.send(bob, "from the ws process")
        async with httpx.AsyncClient(timeout=10) as http:
            cursor = 0
            async with asyncio.timeout(10):
                while not got:
                    resp = await http.get(
                        f"{poller.base_url}/v1/poll",
                        params={"cursor": cursor, "timeout": 2},
                        headers={"authorization": f"Bearer {tb}"},
                    )
                    body = msgspec.json.decode(resp.content)
                    got = [f["message"]["id"] for f in body["frames"] if f["type"] == "msg"]
                    cursor = body["cursor"]
    assert got == [sent.id]


async def test_1500_caught_up_by_long_polling_in_msgs_frames_or_msg_frames(spawn, pg_dsn):
    server = spawn(poll_timeout_s="1")
    url = server.base_url
    (alice, ta), (bob, tb) = await bulk_users(pg_dsn, "lpc", 2)
    async with ChatClient(url, ta, cursor=0) as a:
        sent = [s.id for s in await asyncio.gather(*(a.send(bob, f"m{i}") for i in range(1500)))]

    async def drain(protocol: int | None) -> tuple[list[str], int, set[str]]:
        cursor, got, polls, kinds = 0, [], 0, set()
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            while True:
                params = {"cursor": cursor, "timeout": 0}
                if protocol is not None:
                    params["protocol"] = protocol
                resp = await http.get(
                    "/v1/poll", params=params, headers={"authorization": f"Bearer {tb}"}
                )
                body = msgspec.json.decode(resp.content)
                polls += 1
                items = []
                for frame in body["frames"]:
                    kinds.add(frame["type"])
                    if frame["type"] == "msgs":
                        items += frame["items"]
                    elif frame["type"] == "msg":
                        items.append(frame)
                if not items:
                    return got, polls, kinds
                got += [i["message"]["id"] for i in items]
                cursor = body["cursor"]

    got, polls, kinds = await drain(2)
    assert got == sent and "msgs" in kinds and kinds <= {"msgs", "msg"}
    assert polls <= 3  # 1,500 short messages fit one answer (4,096 or 1 MiB at most)
    got, polls, kinds = await drain(None)  # an old client: one msg frame per message
    assert got == sent and kinds == {"msg"}
    async with ChatClient(url, tb, cursor=0, transport="longpoll", poll_timeout=1) as b:
        ids = [(await b.next_message()).message.id for _ in range(1500)]
        await b.caught_up.wait()
        assert ids == sent and b._inbox.empty()
