"""History end to end: the archiver under SIGKILL, the history API, catch-up after retention."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time

import httpx
import msgspec
import nats
import psycopg
import pytest
from helpers import device, new_user

from core.model import ChatMessage, dm_conversation
from jetchat_client import ApiError, ChatClient, send_http
from jetstream.archiver import archiver_lag
from jetstream.streams import JetStreamSettings


async def postgres_count(pg_dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute("SELECT count(*), count(DISTINCT id) FROM messages")
        total, distinct = await cur.fetchone()
    assert total == distinct
    return int(total)


_keyspaces = itertools.count()


@pytest.fixture(params=["postgres", "cassandra"])
def history_backend(request, pg_dsn):
    """Environment for jetchat processes, and a function counting archived messages."""
    if request.param == "postgres":
        return {}, lambda: postgres_count(pg_dsn)
    node = request.getfixturevalue("cassandra_node")
    session = request.getfixturevalue("cassandra_session")
    keyspace = f"archiver{next(_keyspaces)}"
    request.addfinalizer(lambda: session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}"))

    async def cassandra_count() -> int:
        try:
            rows = await asyncio.to_thread(
                session.execute, f"SELECT count(*) FROM {keyspace}.messages", timeout=60
            )
        except Exception:  # keyspace not created yet
            return 0
        return int(rows.one()[0])

    env = {
        "cassandra_hosts": node.host,
        "cassandra_port": str(node.port),
        "cassandra_keyspace": keyspace,
        "history_bucket_s": "3600",
    }
    return env, cassandra_count


@pytest.mark.chaos
async def test_archiver_killed_mid_way_leaves_each_message_once(spawn, nats_url, history_backend):
    env, archived_count = history_backend
    # creates the stream, buckets, consumer (a killed batch comes back after 2 s) and tables
    spawn(archiver="false", archiver_ack_wait_s="2", **env)
    n = 20_000
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    encode = msgspec.json.Encoder().encode
    for start in range(0, n, 1000):
        futures = []
        for i in range(start, start + 1000):
            sender, to = f"user{i % 7}", f"user{(i % 7) + 1}"
            m = ChatMessage(
                id=f"{1_790_000_000_000 + i:012x}0000abcdef01",
                conv=dm_conversation(sender, to),
                sender=sender,
                sender_device="d",
                to=to,
                text=f"message {i}",
                ts=1_790_000_000_000 + i,
                client_id=f"c{i}",
            )
            data = encode(m)
            futures.append(await js.publish_async(f"chat.inbox.{to}", data))
            futures.append(await js.publish_async(f"chat.inbox.{sender}", data))
        await asyncio.gather(*futures)
    await nc.close()

    archiver = spawn(command="archiver", archiver_ack_wait_s="2", **env)
    async with asyncio.timeout(60):
        while await archived_count() < 3_000:
            await asyncio.sleep(0.02)
    archiver.kill()
    assert await archived_count() < n, "killed too late to test anything"
    spawn(command="archiver", archiver_ack_wait_s="2", **env)
    async with asyncio.timeout(120):
        while await archived_count() < n:
            await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    assert await archived_count() == n


async def test_history_api_for_members_only(spawn, history_backend):
    url = spawn(**history_backend[0]).base_url
    alice, bob, eve = [await new_user(url, n) for n in ("alice", "bob", "eve")]
    alice_token, eve_token = await device(url, alice), await device(url, eve)
    sent = [await send_http(url, alice_token, bob, f"m{i}", f"c{i}") for i in range(30)]
    conv = dm_conversation(alice, bob)
    auth = {"authorization": f"Bearer {alice_token}"}
    async with httpx.AsyncClient(base_url=url) as http:
        async with asyncio.timeout(10):
            while (
                len(
                    (await http.get(f"/v1/conversations/{conv}/messages", headers=auth)).json()[
                        "messages"
                    ]
                )
                < 30
            ):
                await asyncio.sleep(0.05)
        page = (
            await http.get(
                f"/v1/conversations/{conv}/messages?limit=10&before={sent[20].id}", headers=auth
            )
        ).json()
        assert [m["id"] for m in page["messages"]] == [s.id for s in sent[10:20]]
        page = (
            await http.get(
                f"/v1/conversations/{conv}/messages?limit=5&around={sent[15].id}", headers=auth
            )
        ).json()
        assert [m["text"] for m in page["messages"]] == ["m13", "m14", "m15", "m16", "m17"]
        convs = (await http.get("/v1/conversations", headers=auth)).json()
        assert convs == [
            {
                "conv": conv,
                "last_id": sent[-1].id,
                "last_ts": sent[-1].ts,
                "read_up_to": "",
                "unread": 0,  # alice wrote them all
            }
        ]
        resp = await http.get(
            f"/v1/conversations/{conv}/messages", headers={"authorization": f"Bearer {eve_token}"}
        )
        assert resp.status_code == 403 and resp.json()["code"] == "forbidden"
        resp = await http.get(f"/v1/conversations/{conv}/messages?before=nope", headers=auth)
        assert resp.status_code == 422
    # the same over WebSocket
    async with ChatClient(url, alice_token, cursor=0) as a:
        page = await a.history(conv, after=sent[27].id)
        assert [m.text for m in page] == ["m28", "m29"]
        assert [m.text for m in await a.history(conv, around=sent[1].id, limit=3)] == [
            "m0",
            "m1",
            "m2",
        ]
        with pytest.raises(ApiError) as info:
            await a.history(dm_conversation(bob, eve))
        assert info.value.code == "forbidden"


async def test_device_older_than_the_inbox_retention_catches_up_from_history(
    spawn, history_backend
):
    server = spawn(inbox_retention_s="2", **history_backend[0])
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    bob_token = await device(url, bob)
    async with ChatClient(url, await device(url, alice), cursor=0) as a:
        first = await a.send(bob, "before bob left")
        b = ChatClient(url, bob_token, cursor=0)
        await b.connect()
        assert (await b.next_message()).message.id == first.id
        await b.close()  # Bob keeps his cursor and his copy of the conversation
        away = [(await a.send(bob, f"while away {i}")).id for i in range(40)]
        await asyncio.sleep(3)  # the inbox forgets them; history has them
        away.append((await a.send(bob, "just now")).id)
    b.reconnect, b._closing = True, False
    await b.connect()
    async with asyncio.timeout(15):
        while len(b._seen) < 42:
            await b.next_message()
    assert b.resync_needed is not None
    conv = b.conversation(dm_conversation(alice, bob))
    assert [m.id for m in conv] == [first.id, *away]
    await b.close()


async def test_archiver_lag_command_and_metric(server, nats_url):
    url = server.base_url
    alice = await new_user(url, "alice")
    await send_http(url, await device(url, alice), alice, "note to self", "n1")
    env = {**os.environ, "JETCHAT_NATS_URL": nats_url}
    async with asyncio.timeout(10):
        while True:
            out = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "jetchat.cli", "archiver-lag"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            lag = json.loads(out.stdout)
            if lag["total"] == 0 and lag["archived_up_to"] == 1:
                break
            await asyncio.sleep(0.1)
    async with httpx.AsyncClient(base_url=url) as http:
        metrics = (await http.get("/metrics")).text
    assert "jetchat_archived_messages_total 1.0" in metrics
    assert "jetchat_archiver_lag_messages" in metrics


async def test_a_message_postgres_refuses_is_parked_and_history_flows_on(server, nats_url, pg_dsn):
    # issue 13: one message with a NUL in its text stopped history for everyone
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    token = await device(url, alice)
    now = int(time.time() * 1000)
    poisoned = ChatMessage(
        id=f"{now:012x}0000abcdef01",
        conv=dm_conversation(alice, bob),
        sender=alice,
        sender_device="d",
        to=bob,
        text="a\u0000b",
        ts=now,
        client_id="poisoned",
    )
    data = msgspec.json.encode(poisoned)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        # both inbox copies, as the publisher writes them; the archiver keeps bob's
        bob_seq = (await js.publish(f"chat.inbox.{bob}", data)).seq
        await js.publish(f"chat.inbox.{alice}", data)
        for i in range(100):
            await send_http(url, token, bob, f"after {i}", f"after-{i}")
        async with asyncio.timeout(30):
            while await postgres_count(pg_dsn) < 100:
                await asyncio.sleep(0.05)
            while (lag := await archiver_lag(js, JetStreamSettings())).total:
                await asyncio.sleep(0.05)
        assert await postgres_count(pg_dsn) == 100
        assert lag.archived_up_to == (await js.stream_info("CHAT_INBOX")).state.last_seq

        assert (await js.stream_info("CHAT_DEAD")).state.messages == 1
        parked = await js.get_msg("CHAT_DEAD", seq=1)
        assert parked.subject == "chat.dead.history"
        assert parked.data == data  # the inbox message's bytes, as stored
        headers = parked.headers or {}
        assert headers["Jetchat-Message-Id"] == poisoned.id
        assert headers["Jetchat-Inbox-Seq"] == str(bob_seq)
        assert headers["Jetchat-Inbox-Subject"] == f"chat.inbox.{bob}"
        assert headers["Jetchat-Reason"].startswith(
            "DataError: PostgreSQL text fields cannot contain NUL"
        )
    finally:
        await nc.close()
    async with httpx.AsyncClient(base_url=url) as http:
        metrics = (await http.get("/metrics")).text
    assert "jetchat_history_parked_total 1.0" in metrics
    assert "jetchat_archived_messages_total 100.0" in metrics
    log = server.log_path.read_text()
    [parked_line] = [line for line in log.splitlines() if "parked" in line]
    assert poisoned.id in parked_line and "NUL" in parked_line
    assert "a\\u0000b" not in log and "a\u0000b" not in log  # never the text
