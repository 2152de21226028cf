"""The connection driver against in-memory ports and a fake transport."""

import asyncio
import itertools
from typing import Any

import msgspec
from fakes import FakeTransport, make_chat

from core.chat import Limits
from core.connection import Connection
from core.messaging import SendRequest
from core.model import Device, User


def device(user: str) -> Device:
    return Device(f"{user}-dev", user, "phone", b"", 0, 2**62)


async def frames(t: FakeTransport, n: int) -> list[dict[str, Any]]:
    return [msgspec.json.decode(await asyncio.wait_for(t.frames.get(), 2)) for _ in range(n)]


async def test_replay_caught_up_then_live_and_errors_keep_the_connection():
    chat, _, accounts = make_chat(Limits(replay_batch=2, cursor_flush_s=0.01))
    for n in ("alice", "bob"):
        await accounts.create_user(User(n, n, "x", 0))
    sent = [
        await chat.messaging.send("alice", "a", SendRequest(f"c{i}", "bob", f"m{i}"))
        for i in range(5)
    ]
    t = FakeTransport()
    conn = Connection(chat, device("bob"), t)
    await conn.open()
    assert (await frames(t, 1))[0]["type"] == "welcome"
    await conn.receive('{"type":"hello","cursor":0}')
    replay = await frames(t, 6)
    assert [f["message"]["id"] for f in replay[:5]] == [s.id for s in sent]
    assert replay[5] == {"type": "caught_up", "seq": replay[4]["seq"]}
    live = await chat.messaging.send("alice", "a", SendRequest("c9", "bob", "live"))
    assert (await frames(t, 1))[0]["message"]["id"] == live.id
    await conn.receive("{oops")
    await conn.receive(b"\x00")
    await conn.receive('{"type":"ping"}')
    assert [f.get("code", f["type"]) for f in await frames(t, 3)] == [
        "malformed",
        "not_text",
        "pong",
    ]
    await conn.receive(f'{{"type":"ack","seq":{replay[4]["seq"]}}}')
    await conn.aclose()
    assert await chat.cursors.get("bob", "bob-dev") == replay[4]["seq"]
    assert t.closed is None


async def test_a_cursor_beyond_the_inbox_gets_resync_needed():
    chat, _, accounts = make_chat()
    await accounts.create_user(User("bob", "bob", "x", 0))
    t = FakeTransport()
    conn = Connection(chat, device("bob"), t)
    await conn.open()
    await conn.receive('{"type":"hello","cursor":99}')
    assert (await frames(t, 2))[1] == {
        "type": "resync_needed",
        "cursor": 99,
        "first_seq": 0,
        "last_seq": 0,
    }
    await conn.aclose()


async def test_replay_reads_ahead_in_byte_bounded_pages_each_from_where_the_last_ended():
    limits = Limits(replay_batch=7, replay_bytes=1500, cursor_flush_s=0.01)
    chat, inbox, accounts = make_chat(limits)
    for n in ("alice", "bob"):
        await accounts.create_user(User(n, n, "x", 0))
    sent = [
        (await chat.messaging.send("alice", "a", SendRequest(f"c{i}", "bob", f"m{i}"))).id
        for i in range(60)
    ]
    reads: list[tuple[int, int | None, bool]] = []
    read_page = inbox.read_page

    async def recording_read_page(user, after_seq, limit, max_bytes):
        page = await read_page(user, after_seq, limit, max_bytes)
        reads.append((after_seq, page.entries[-1].seq if page.entries else None, page.more))
        assert len(page.entries) <= 7
        return page

    inbox.read_page = recording_read_page  # type: ignore[method-assign]
    t = FakeTransport()
    conn = Connection(chat, device("bob"), t)
    await conn.open()
    await frames(t, 1)
    await conn.receive('{"type":"hello","cursor":0}')
    replay = await frames(t, 61)
    assert [f["message"]["id"] for f in replay[:60]] == sent  # every message once, in order
    assert replay[60] == {"type": "caught_up", "seq": replay[59]["seq"]}
    assert len(reads) > 8 and reads[-1][2] is False  # byte-bounded pages, to the end
    for (_, last, more), (after, _, _) in itertools.pairwise(reads):
        assert more and after == last  # each read starts where the one before ended
    await conn.aclose()


async def test_protocol_2_replays_in_msgs_frames_then_live():
    limits = Limits(replay_batch=7, replay_bytes=1500, msgs_frame_bytes=700, cursor_flush_s=0.01)
    chat, _, accounts = make_chat(limits)
    for n in ("alice", "bob"):
        await accounts.create_user(User(n, n, "x", 0))
    sent = [
        (await chat.messaging.send("alice", "a", SendRequest(f"c{i}", "bob", f"m{i}"))).id
        for i in range(100)
    ]
    t = FakeTransport()
    conn = Connection(chat, device("bob"), t)
    await conn.open()
    assert (await frames(t, 1))[0]["protocol"] == 2
    await conn.receive('{"type":"hello","cursor":0,"protocol":2}')
    got: list[tuple[int, str]] = []
    kinds = set()
    while (frame := (await frames(t, 1))[0])["type"] != "caught_up":
        kinds.add(frame["type"])
        items = frame["items"] if frame["type"] == "msgs" else [frame]
        got += [(item["seq"], item["message"]["id"]) for item in items]
    assert "msgs" in kinds  # a page may end with one message alone, in a msg frame
    assert [i for _, i in got] == sent  # every message once, in order
    assert frame["seq"] == got[-1][0]
    live = await chat.messaging.send("alice", "a", SendRequest("c-live", "bob", "live"))
    [frame] = await frames(t, 1)
    assert frame["type"] == "msg" and frame["message"]["id"] == live.id  # one alone: msg
    await conn.receive(f'{{"type":"ack","seq":{frame["seq"]}}}')
    await conn.aclose()
    assert await chat.cursors.get("bob", "bob-dev") == frame["seq"]


async def test_hello_with_protocol_0_is_refused_and_an_unknown_newer_one_gets_ours():
    chat, _, accounts = make_chat()
    for n in ("alice", "bob"):
        await accounts.create_user(User(n, n, "x", 0))
    for i in range(3):
        await chat.messaging.send("alice", "a", SendRequest(f"c{i}", "bob", f"m{i}"))
    t = FakeTransport()
    conn = Connection(chat, device("bob"), t)
    await conn.open()
    await conn.receive('{"type":"hello","cursor":0,"protocol":0}')
    assert (await frames(t, 2))[1]["code"] == "invalid_argument"
    await conn.receive('{"type":"hello","cursor":0,"protocol":99}')
    replay = await frames(t, 2)
    assert replay[0]["type"] == "msgs" and len(replay[0]["items"]) == 3
    assert replay[1]["type"] == "caught_up"
    await conn.aclose()


async def test_the_flush_worker_stores_acked_positions_while_connections_stay_open():
    chat, _, accounts = make_chat(Limits(cursor_flush_s=0))
    for n in ("alice", "bob"):
        await accounts.create_user(User(n, n, "x", 0))
    flusher = asyncio.ensure_future(chat.flush_cursors())  # the supervisor runs it in the app
    t = FakeTransport()
    conn = Connection(chat, device("bob"), t)
    try:
        await conn.open()
        await conn.receive('{"type":"hello","cursor":0}')
        await frames(t, 2)  # welcome, caught_up
        for i in range(2):  # the worker idles between bursts, then flushes the next one
            await chat.messaging.send("alice", "a", SendRequest(f"c{i}", "bob", f"m{i}"))
            [frame] = await frames(t, 1)
            await conn.receive(f'{{"type":"ack","seq":{frame["seq"]}}}')
            for _ in range(50):
                if await chat.cursors.get("bob", "bob-dev") == frame["seq"]:
                    break
                await asyncio.sleep(0)
            assert await chat.cursors.get("bob", "bob-dev") == frame["seq"]
        assert not flusher.done()
    finally:
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        await conn.aclose()
