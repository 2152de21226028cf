"""The archiver retries a history store that fails for now, and parks nothing: against a real
nats-server and a real Postgres whose store fails its first writes as a lost connection does."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
import nats
import psycopg

from core.model import ChatMessage, dm_conversation
from jetstream.archiver import archiver, archiver_lag
from jetstream.streams import JetStreamSettings, ensure
from storage.postgres import Pool, open_pool
from storage.postgres_history import PostgresHistoryStore


class Unreachable(PostgresHistoryStore):
    """The real store, behind a Postgres that cannot be reached for its first ``failures``
    writes."""

    def __init__(self, pool: Pool, failures: int) -> None:
        super().__init__(pool)
        self.failures = failures

    async def write(self, messages: Sequence[ChatMessage]) -> None:
        if self.failures:
            self.failures -= 1
            raise psycopg.OperationalError("connection failed: server closed the connection")
        await super().write(messages)


async def test_a_store_failing_for_now_is_retried_not_parked(nats_url, pg_dsn):
    settings = JetStreamSettings()
    nc = await nats.connect(nats_url)
    pool = await open_pool(pg_dsn, max_size=2)
    task = None
    try:
        js = nc.jetstream()
        await ensure(js, settings)
        for i in range(10):
            m = ChatMessage(
                id=f"{1_790_000_000_000 + i:012x}0000abcdef01",
                conv=dm_conversation("alice", "bob"),
                sender="alice",
                sender_device="d",
                to="bob",
                text=f"m{i}",
                ts=1_790_000_000_000 + i,
            )
            await js.publish("chat.inbox.bob", msgspec.json.encode(m))
        store = Unreachable(pool, failures=4)
        task = asyncio.create_task(archiver(nc, js, store, settings).run())
        async with asyncio.timeout(30):
            while len(await store.page(dm_conversation("alice", "bob"), limit=20)) < 10:
                assert not task.done()
                await asyncio.sleep(0.05)
            while (await archiver_lag(js, settings)).total:
                await asyncio.sleep(0.05)
        assert store.failures == 0
        assert (await js.stream_info(settings.dead_stream)).state.messages == 0
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await pool.close()
        await nc.close()
