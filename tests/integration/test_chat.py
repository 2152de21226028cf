"""1:1 chat end to end over real jetchat processes, nats-server and Postgres."""

from __future__ import annotations

import asyncio

import msgspec
import websockets
from helpers import device, inbox_count, new_user

from jetchat_client import ChatClient, send_http


async def collect(client: ChatClient, n: int, timeout: float = 30) -> list[str]:
    ids = []
    async with asyncio.timeout(timeout):
        while len(ids) < n:
            ids.append((await client.next_message()).message.id)
    return ids


async def test_alice_two_devices_and_bob_see_one_conversation_in_one_order(server):
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    a1 = ChatClient(url, await device(url, alice, "laptop"), cursor=0)
    a2 = ChatClient(url, await device(url, alice, "phone"), cursor=0)
    b1 = ChatClient(url, await device(url, bob), cursor=0)
    for c in (a1, a2, b1):
        await c.connect()
        await c.caught_up.wait()

    # Both sides send at once, from every device, so the inboxes see interleaved writes.
    async def talk(c: ChatClient, to: str, tag: str) -> list[str]:
        return [(await c.send(to, f"{tag} {i}")).id for i in range(20)]

    sent = await asyncio.gather(talk(a1, bob, "a1"), talk(a2, bob, "a2"), talk(b1, alice, "b1"))
    all_ids = sorted(i for ids in sent for i in ids)
    assert len(set(all_ids)) == 60

    for c in (a1, a2, b1):
        await collect(c, 60)  # every device gets every message, its own included
    conv = f"dm.{min(alice, bob)}.{max(alice, bob)}"
    views = [[m.id for m in c.conversation(conv)] for c in (a1, a2, b1)]
    assert views[0] == views[1] == views[2] == all_ids
    texts = {m.text for m in a1.conversation(conv)}
    assert {"a1 0", "a2 19", "b1 7"} <= texts
    for c in (a1, a2, b1):
        await c.close()


async def test_bob_offline_gets_all_1000_in_order_once(server, nats_url):
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    bob_token = await device(url, bob)
    b = ChatClient(url, bob_token, cursor=0)
    await b.connect()
    await b.caught_up.wait()
    await b.close()
    cursor = b.cursor

    async with ChatClient(url, await device(url, alice), cursor=0) as a:
        sent = await asyncio.gather(*(a.send(bob, f"m{i}") for i in range(1000)))
    sent_ids = [s.id for s in sent]
    assert sent_ids == sorted(sent_ids)  # one connection's sends get increasing ids

    async with ChatClient(url, bob_token, cursor=cursor) as b:
        got = await collect(b, 1000)
        await b.caught_up.wait()
        assert got == sent_ids
        await asyncio.sleep(0.3)
        assert b._inbox.empty()  # nothing more: no duplicate
    assert await inbox_count(nats_url, bob) == 1000


async def test_device_that_lost_its_cursor_resumes_from_the_acked_position(server):
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    bob_token, alice_token = await device(url, bob), await device(url, alice)
    async with ChatClient(url, alice_token, cursor=0) as a:
        first = [(await a.send(bob, f"old {i}")).id for i in range(5)]
        async with ChatClient(url, bob_token, cursor=0) as b:
            assert await collect(b, 5) == first
            await asyncio.sleep(0.5)  # the acks reach the server and are flushed
        later = [(await a.send(bob, f"new {i}")).id for i in range(3)]
    # cursor=None: "I lost my cursor, use the one you stored for this device"
    async with ChatClient(url, bob_token, cursor=None) as b:
        assert await collect(b, 3) == later
        await b.caught_up.wait()


async def test_sender_on_one_process_recipient_on_another(spawn):
    p1, p2 = spawn(), spawn()
    alice, bob = await new_user(p1.base_url, "alice"), await new_user(p2.base_url, "bob")
    async with (
        ChatClient(p1.base_url, await device(p1.base_url, alice), cursor=0) as a,
        ChatClient(p2.base_url, await device(p2.base_url, bob), cursor=0) as b,
    ):
        await b.caught_up.wait()
        s1 = await a.send(bob, "hello from process 1")
        assert (await b.next_message()).message.id == s1.id
        s2 = await b.send(alice, "hello from process 2")
        got = await a.next_message()
        if got.message.id == s1.id:  # alice's own message reaches her devices too
            got = await a.next_message()
        assert got.message.id == s2.id and got.message.text == "hello from process 2"


async def test_http_sender_and_websocket_recipient_share_the_conversation(server):
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    alice_token = await device(url, alice)
    async with ChatClient(url, await device(url, bob), cursor=0) as b:
        sent = await send_http(url, alice_token, bob, "over plain HTTP", "c-1")
        msg = (await b.next_message()).message
        assert (msg.id, msg.text, msg.sender, msg.to) == (sent.id, "over plain HTTP", alice, bob)


async def read_replay(url: str, token: str, hello: str) -> tuple[list[dict], int]:
    """A raw WebSocket replay from cursor 0: every frame until caught_up, and its seq."""
    got = []
    async with websockets.connect(
        url.replace("http", "ws") + "/v1/ws",
        additional_headers={"authorization": f"Bearer {token}"},
        compression=None,
    ) as ws:
        welcome = msgspec.json.decode(await ws.recv())
        assert welcome["type"] == "welcome" and welcome["protocol"] == 2
        await ws.send(hello)
        async with asyncio.timeout(30):
            while (frame := msgspec.json.decode(raw := await ws.recv()))["type"] != "caught_up":
                got.append(frame)
                assert len(raw) <= 64 * 1024  # JETCHAT_MSGS_FRAME_BYTES
    return got, frame["seq"]


async def test_1500_caught_up_in_msgs_frames_and_by_an_old_client_in_msg_frames(server):
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    bob_token = await device(url, bob)
    async with ChatClient(url, await device(url, alice), cursor=0) as a:
        sent = [s.id for s in await asyncio.gather(*(a.send(bob, f"m{i}") for i in range(1500)))]

    # a client speaking protocol 2 gets them several per frame, in order, once
    frames, end = await read_replay(url, bob_token, '{"type":"hello","cursor":0,"protocol":2}')
    assert {f["type"] for f in frames} <= {"msgs", "msg"}  # msg: a message alone
    assert len(frames) < 100
    items = [item for f in frames for item in (f["items"] if f["type"] == "msgs" else [f])]
    assert [i["message"]["id"] for i in items] == sent
    assert end == items[-1]["seq"]

    # a client that does not say which protocol it speaks gets version 1: one msg each
    old, old_end = await read_replay(url, bob_token, '{"type":"hello","cursor":0}')
    assert {f["type"] for f in old} == {"msg"}
    assert [f["message"]["id"] for f in old] == sent and old_end == end

    # the client library speaks 2, and acknowledging what it got moves the stored cursor
    async with ChatClient(url, bob_token, cursor=0) as b:
        assert await collect(b, 1500) == sent
        await b.caught_up.wait()
        await asyncio.sleep(0.3)
        assert b._inbox.empty()
    async with ChatClient(url, bob_token) as b:  # cursor None: resume where it acked
        await b.caught_up.wait()
        assert b.cursor == end and b._inbox.empty()
