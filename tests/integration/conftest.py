"""End-to-end fixtures: real ``jetchat serve`` processes on the session's NATS and Postgres."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from devtools.jetchat_process import HIGH_LIMITS, JetchatProcess
from jetstream.streams import JetStreamSettings, ensure

# Short intervals so tests never wait long; production defaults are in jetchat/settings.py.
TEST_ENV = {
    "JETCHAT_CURSOR_FLUSH_S": "0.1",
    "JETCHAT_WS_PING_INTERVAL_S": "5",
    "JETCHAT_WS_PING_TIMEOUT_S": "5",
    "JETCHAT_SHUTDOWN_GRACE_S": "2",
    **HIGH_LIMITS,
}

Spawn = Callable[..., JetchatProcess]


@pytest.fixture
def spawn(nats_url: str, pg_dsn: str, tmp_path: Path) -> Iterator[Spawn]:
    """Start ``jetchat serve`` processes sharing this test's NATS and database."""
    started: list[JetchatProcess] = []
    numbers = itertools.count()

    def start(port: int = 0, command: str = "serve", **env: str) -> JetchatProcess:
        full_env = {
            **TEST_ENV,
            "JETCHAT_NATS_URL": nats_url,
            "JETCHAT_POSTGRES_DSN": pg_dsn,
            **{f"JETCHAT_{k.upper()}": v for k, v in env.items()},
        }
        data = tmp_path / f"p{next(numbers)}"
        proc = JetchatProcess(data, full_env, port=port, command=command).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def server(spawn: Spawn) -> JetchatProcess:
    return spawn()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    """A NATS client of the session's server, with jetchat's streams and buckets made."""
    client = await nats.connect(nats_url)
    await ensure(client.jetstream(), JetStreamSettings())
    yield client
    await client.close()
