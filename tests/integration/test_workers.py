"""Supervised workers against real servers: the archiver comes back after NATS failures,
readiness and metrics say when it is down, and ``jetchat archiver`` exits non-zero when its
work dies for good."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import nats
import psycopg
import pytest
from helpers import device, new_user

from devtools.jetchat_process import JetchatProcess
from embedded import NatsServer
from jetchat_client import send_http


async def archived(pg_dsn: str) -> int:
    """Messages in history; each exactly once."""
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute("SELECT count(*), count(DISTINCT (conv, id)) FROM messages")
        row = await cur.fetchone()
    assert row is not None
    total, distinct = row
    assert total == distinct
    return int(total)


async def wait_archived(pg_dsn: str, n: int, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while await archived(pg_dsn) < n:
            await asyncio.sleep(0.05)
    assert await archived(pg_dsn) == n


async def ready(url: str) -> tuple[int, dict[str, str]]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        resp = await http.get("/readyz")
    return resp.status_code, resp.json()["checks"]


async def metric(url: str, line_start: str) -> float:
    async with httpx.AsyncClient(base_url=url) as http:
        text = (await http.get("/metrics")).text
    return float(next(line for line in text.splitlines() if line.startswith(line_start)).split()[1])


async def send(url: str, token: str, to: str, prefix: str, n: int) -> None:
    for i in range(n):
        await send_http(url, token, to, f"{prefix} {i}", f"{prefix}-{i}")


@pytest.mark.chaos
async def test_archiver_restarts_after_the_nats_server_died_and_history_completes(
    tmp_path: Path, pg_dsn: str
):
    # a nats-server of this test alone: it is killed (SIGKILL, by its PID) and started again
    # on the same port and store
    nats_dir = tmp_path / "nats"
    nats_server = NatsServer(nats_dir).start()
    port, monitor_port = nats_server.port, int(nats_server.monitor_url.rsplit(":", 1)[1])
    env = {
        "JETCHAT_NATS_URL": nats_server.url,
        "JETCHAT_POSTGRES_DSN": pg_dsn,
        "JETCHAT_WORKER_DOWN_READY_S": "1",
        "JETCHAT_SHUTDOWN_GRACE_S": "2",
    }
    proc = JetchatProcess(tmp_path / "jetchat", env).start()
    try:
        url = proc.base_url
        alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
        token = await device(url, alice)
        await send(url, token, bob, "before", 5)
        await wait_archived(pg_dsn, 5)
        assert await metric(url, 'jetchat_worker_up{worker="archiver"}') == 1
        restarts_before = await metric(url, 'jetchat_worker_restarts_total{worker="archiver"}')

        os.kill(nats_server.pid, signal.SIGKILL)
        nats_server.stop()  # reaps it
        async with asyncio.timeout(30):
            while True:
                status, checks = await ready(url)
                if checks.get("worker:archiver", "ok").startswith("down for"):
                    break
                await asyncio.sleep(0.2)
        assert status == 503
        assert await metric(url, 'jetchat_worker_up{worker="archiver"}') == 0

        nats_server = NatsServer(nats_dir, port=port, monitor_port=monitor_port).start()
        async with asyncio.timeout(60):
            while (await ready(url))[0] != 200:
                await asyncio.sleep(0.2)
        _, checks = await ready(url)
        assert checks["worker:archiver"] == "ok"
        await send(url, token, bob, "after", 5)
        await wait_archived(pg_dsn, 10)
        assert await metric(url, 'jetchat_worker_up{worker="archiver"}') == 1
        restarts = await metric(url, 'jetchat_worker_restarts_total{worker="archiver"}')
        assert restarts > restarts_before
    finally:
        proc.kill()
        nats_server.stop()


async def test_a_deleted_consumer_is_recreated_and_every_message_archived_once(
    spawn, nats_url, pg_dsn
):
    server = spawn()
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    token = await device(url, alice)
    await send(url, token, bob, "before", 5)
    await wait_archived(pg_dsn, 5)
    nc = await nats.connect(nats_url)
    try:
        # fetches now get 503 (ServiceUnavailableError): the archiver of old ended there
        await nc.jetstream().delete_consumer("CHAT_INBOX", "archiver")
    finally:
        await nc.close()
    await send(url, token, bob, "after", 5)
    # the recreated consumer starts over from the inbox's start: written again, not twice
    await wait_archived(pg_dsn, 10)
    assert await metric(url, 'jetchat_worker_restarts_total{worker="archiver"}') >= 1
    assert await metric(url, 'jetchat_worker_up{worker="archiver"}') == 1
    assert await metric(url, 'jetchat_worker_up{worker="archiver-lag"}') == 1
    assert (await ready(url))[0] == 200


async def test_jetchat_archiver_exits_non_zero_when_its_work_dies_for_good(spawn, nats_url):
    stopped = spawn(command="archiver")
    assert stopped.stop() == 0  # SIGTERM: a clean exit

    doomed = spawn(command="archiver", archiver_max_restarts="2")
    nc = await nats.connect(nats_url)
    try:
        # no stream, no consumer: every attempt fails (503, then stream not found)
        await nc.jetstream().delete_stream("CHAT_INBOX")
    finally:
        await nc.close()
    assert doomed.proc is not None
    code = await asyncio.to_thread(doomed.proc.wait, 30)
    assert code == 1
    assert "giving up: too many restarts" in doomed.log_tail()
    assert "worker archiver failed for good" in doomed.log_tail()
