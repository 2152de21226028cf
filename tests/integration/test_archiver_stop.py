"""The archiver ends when cancelled, whatever its pull request is doing (a clean shutdown
waits for it), against a real nats-server."""

from __future__ import annotations

import asyncio

import nats
import pytest

from jetstream.archiver import archiver
from jetstream.streams import JetStreamSettings, ensure


class Nowhere:
    """A history store that keeps nothing (the stream is empty anyway)."""

    async def write(self, messages: object) -> None:
        pass


@pytest.mark.parametrize("idle_s", [0.2, 0.99, 1.0, 1.01, 2.5])
async def test_archiver_stops_when_cancelled_while_fetching(nats_url, idle_s):
    # cancelled at several points of its 1 s fetch, including where the fetch times out
    settings = JetStreamSettings(inbox_stream="ARCHIVER_STOP", inbox_subject="stop.inbox")
    nc = await nats.connect(nats_url)
    try:
        await ensure(nc.jetstream(), settings)
        runner = archiver(nc, nc.jetstream(), Nowhere(), settings)  # type: ignore[arg-type]
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(idle_s)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        assert done and task.cancelled()
    finally:
        await nc.close()
