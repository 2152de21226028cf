"""The device session (core/session.py) against in-memory ports and fake transports, with an
injected clock and no sleeping."""

import asyncio
import itertools
from typing import Any

import msgspec
import pytest
from fakes import FakePollTransport, FakeTransport, make_chat

from core.chat import Limits
from core.close import CloseCode
from core.errors import ChatError, ErrorCode
from core.messaging import SendRequest
from core.model import Device, User
from core.session import DeviceSession, LongPolls


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
    conn = DeviceSession(chat, device("bob"), t)
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
    conn = DeviceSession(chat, device("bob"), t)
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
    conn = DeviceSession(chat, device("bob"), t)
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
    conn = DeviceSession(chat, device("bob"), t)
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
    conn = DeviceSession(chat, device("bob"), t)
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
    flusher = asyncio.ensure_future(
        chat.sessions.flush_cursors()
    )  # the supervisor runs it in the app
    t = FakeTransport()
    conn = DeviceSession(chat, device("bob"), t)
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


# --- the session's rules, on both transports ----------------------------------------------


async def two_users(limits: Limits | None = None):
    chat, inbox, accounts = make_chat(limits)
    for n in ("alice", "bob"):
        await accounts.create_user(User(n, n, "x", 0))
    return chat, inbox


async def send(chat, n: int, prefix: str = "c") -> list[str]:
    return [
        (await chat.messaging.send("alice", "a", SendRequest(f"{prefix}{i}", "bob", "m"))).id
        for i in range(n)
    ]


def delivered_mark(chat) -> str:
    state = chat.receipts._store.marks.get(("dm.alice.bob", "bob"))
    return state.delivered if state else ""


def poll_items(t: FakePollTransport) -> list[dict[str, Any]]:
    out = []
    for frame in map(msgspec.json.decode, t.frames):
        if frame["type"] == "msgs":
            out += frame["items"]
        elif frame["type"] == "msg":
            out.append(frame)
    return out


async def test_messages_sent_during_the_replay_come_once_in_order_with_no_gap():
    chat, inbox = await two_users(Limits(replay_batch=4, cursor_flush_s=0.01))
    before = await send(chat, 10)
    during: list[str] = []
    read_page = inbox.read_page

    async def read_and_send(user, after_seq, limit, max_bytes):
        page = await read_page(user, after_seq, limit, max_bytes)
        if len(during) < 6:  # live messages land while the replay is under way
            during.extend(await send(chat, 2, prefix=f"d{len(during)}-"))
        return page

    inbox.read_page = read_and_send
    t = FakeTransport()
    session = DeviceSession(chat, device("bob"), t)
    await session.open()
    await session.receive('{"type":"hello","cursor":0}')
    got: list[tuple[int, str]] = []
    caught_up = False
    for frame in await frames(t, 1 + 16 + 1):
        if frame["type"] == "msg":
            got.append((frame["seq"], frame["message"]["id"]))
        caught_up = caught_up or frame["type"] == "caught_up"
    assert caught_up
    assert [i for _, i in got] == before + during  # nothing skipped, nothing twice
    assert [s for s, _ in got] == sorted(s for s, _ in got)
    await session.aclose()


async def test_a_negative_cursor_is_refused_on_both_transports():
    chat, _ = await two_users()
    t = FakeTransport()
    session = DeviceSession(chat, device("bob"), t)
    await session.open()
    await session.receive('{"type":"hello","cursor":-1}')
    assert (await frames(t, 2))[1]["code"] == "invalid_argument"
    await session.aclose()
    polls = LongPolls(chat, poll_timeout_s=25)
    with pytest.raises(ChatError) as refused:
        await polls.poll(device("bob"), -1, 0, FakePollTransport())
    assert refused.value.code is ErrorCode.INVALID_ARGUMENT
    with pytest.raises(ChatError):
        await polls.poll(device("bob"), 0, 0, FakePollTransport(), protocol=0)


async def test_acks_become_delivered_receipts_from_the_heads_sent():
    chat, inbox = await two_users()
    ids = await send(chat, 3)
    t = FakeTransport()
    session = DeviceSession(chat, device("bob"), t)
    await session.open()
    await session.receive('{"type":"hello","cursor":0}')
    replay = await frames(t, 1 + 3 + 1)
    reads = []
    read_page = inbox.read_page

    async def recording(user, after_seq, limit, max_bytes):
        reads.append(after_seq)
        return await read_page(user, after_seq, limit, max_bytes)

    inbox.read_page = recording
    await session.receive(f'{{"type":"ack","seq":{replay[2]["seq"]}}}')  # the second message
    await session.flush_cursor()
    assert delivered_mark(chat) == ids[1]
    await session.receive(f'{{"type":"ack","seq":{replay[3]["seq"]}}}')
    await session.flush_cursor()
    assert delivered_mark(chat) == ids[2]
    assert reads == []  # from what was tracked as sent, not read back
    await session.aclose()


async def test_a_cursor_beyond_the_inbox_gets_resync_needed_when_polling_too():
    chat, _ = await two_users()
    await send(chat, 2)
    t = FakePollTransport()
    cursor = await LongPolls(chat, 25).poll(device("bob"), 99, 5, t)
    assert cursor == 99
    assert [msgspec.json.decode(f) for f in t.frames] == [
        {"type": "resync_needed", "cursor": 99, "first_seq": 1, "last_seq": 4}
    ]


async def test_a_poll_ends_with_its_cursor_and_the_next_one_acknowledges_it():
    chat, inbox = await two_users()
    ids = await send(chat, 3)
    polls = LongPolls(chat, poll_timeout_s=25)
    bob = device("bob")
    first = FakePollTransport()
    cursor = await polls.poll(bob, 0, 5, first, protocol=2)  # the inbox has some: at once
    items = poll_items(first)
    assert [i["message"]["id"] for i in items] == ids and cursor == items[-1]["seq"]
    assert msgspec.json.decode(first.frames[0])["type"] == "msgs"
    assert delivered_mark(chat) == ""  # not acknowledged yet
    reads = []
    read_page = inbox.read_page

    async def recording(user, after_seq, limit, max_bytes):
        reads.append(after_seq)
        return await read_page(user, after_seq, limit, max_bytes)

    inbox.read_page = recording
    empty = FakePollTransport()
    assert await polls.poll(bob, cursor, 0, empty) == cursor  # the timeout: same cursor
    assert empty.frames == []
    assert await chat.cursors.get("bob", "bob-dev") == cursor
    assert delivered_mark(chat) == ids[-1]
    assert reads == [cursor]  # receipts from the heads the first poll sent: no read back


async def test_a_poll_on_a_process_that_did_not_send_reads_the_acked_range_back():
    chat, inbox = await two_users()
    ids = await send(chat, 3)
    bob = device("bob")
    cursor = await LongPolls(chat, 25).poll(bob, 0, 0, FakePollTransport())
    other = LongPolls(chat, 25)  # another process, or this one after the cache let go
    reads = []
    read_page = inbox.read_page

    async def recording(user, after_seq, limit, max_bytes):
        reads.append(after_seq)
        return await read_page(user, after_seq, limit, max_bytes)

    inbox.read_page = recording
    assert await other.poll(bob, cursor, 0, FakePollTransport()) == cursor
    assert delivered_mark(chat) == ids[-1]
    assert reads == [0, cursor]  # the acknowledged range, then the poll's own read


async def test_what_a_poll_sent_is_forgotten_after_the_poll_timeout_and_10_s():
    chat, inbox = await two_users()
    more = FakePollTransport()
    polls = LongPolls(chat, poll_timeout_s=25)
    bob = device("bob")
    ids = await send(chat, 2)
    cursor = await polls.poll(bob, 0, 0, more)
    chat.clock.now += 35_001
    reads = []
    read_page = inbox.read_page

    async def recording(user, after_seq, limit, max_bytes):
        reads.append(after_seq)
        return await read_page(user, after_seq, limit, max_bytes)

    inbox.read_page = recording
    await polls.poll(bob, cursor, 0, FakePollTransport())
    assert reads == [0, cursor] and delivered_mark(chat) == ids[-1]


async def test_a_pending_poll_answers_a_live_message_and_a_newer_poll_ends_it():
    chat, _ = await two_users()
    polls = LongPolls(chat, poll_timeout_s=25)
    bob = device("bob")
    t = FakePollTransport()
    pending = asyncio.ensure_future(polls.poll(bob, 0, 60, t))
    for _ in range(20):
        await asyncio.sleep(0)  # let it reach its wait (no timer runs: nothing sleeps)
    assert not pending.done()
    [live] = await send(chat, 1)
    cursor = await asyncio.wait_for(pending, 1)
    assert [i["message"]["id"] for i in poll_items(t)] == [live] and cursor > 0
    older = asyncio.ensure_future(polls.poll(bob, cursor, 60, FakePollTransport()))
    for _ in range(20):
        await asyncio.sleep(0)
    newer = asyncio.ensure_future(polls.poll(bob, cursor, 0, FakePollTransport()))
    assert await asyncio.wait_for(older, 1) == cursor  # ended by the newer: what it has
    assert await newer == cursor


async def test_a_client_that_does_not_read_is_closed_as_a_slow_consumer():
    chat, _ = await two_users(Limits(send_timeout_s=0))  # wait_for(…, 0): no sleeping

    class Stuck(FakeTransport):
        async def send(self, frame: str) -> None:
            await asyncio.Future()  # the peer never takes it

    t = Stuck()
    session = DeviceSession(chat, device("bob"), t)
    await session.open()  # the welcome is queued; the writer finds the peer stuck
    for _ in range(20):
        if t.closed:
            break
        await asyncio.sleep(0)
    assert t.closed == (CloseCode.SLOW_CONSUMER, "slow consumer: reconnect with your cursor")
    await session.aclose()


async def test_a_bug_while_handling_a_frame_answers_internal_and_keeps_the_connection(
    monkeypatch, caplog
):
    chat, _, accounts = make_chat()
    await accounts.create_user(User("bob", "bob", "x", 0))
    t = FakeTransport()
    conn = DeviceSession(chat, device("bob"), t)
    await conn.open()
    await frames(t, 1)  # welcome

    async def boom(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(DeviceSession, "_queue_send", boom)
    await conn.receive('{"type":"send","client_id":"c-1","to":"alice","text":"hi"}')
    monkeypatch.setattr(chat.presence, "beat", boom)
    await conn.receive('{"type":"ping"}')
    first, second = await frames(t, 2)
    assert (first["code"], first["ref"]) == ("internal", "c-1")
    assert first["message"].startswith("internal error (error id ")
    assert second["code"] == "internal" and "ref" not in second
    assert t.closed is None
    failures = [r for r in caplog.records if r.getMessage() == "handling a frame failed"]
    assert len(failures) == 2 and all(r.exc_info for r in failures)
    assert failures[0].error_id in first["message"]
    monkeypatch.undo()
    await conn.receive('{"type":"ping"}')
    assert (await frames(t, 1))[0]["type"] == "pong"
    await conn.aclose()
