"""``jetchat serve`` with nothing configured: it starts and stops nats-server and Postgres."""

from __future__ import annotations

import asyncio
import time

from helpers import device, new_user
from servers import processes_using, scratch_dir

from devtools.jetchat_process import JetchatProcess
from jetchat_client import ChatClient


async def test_embedded_defaults_chat_then_shut_down_cleanly(tmp_path):
    with scratch_dir(tmp_path) as scratch:
        await run_embedded(scratch / "embedded")


async def run_embedded(data):
    server = JetchatProcess(data, {"JETCHAT_LOG_LEVEL": "info"}).start(timeout=60)
    try:
        url = server.base_url
        alice = await new_user(url, "alice")
        async with ChatClient(url, await device(url, alice), cursor=0) as c:
            sent = await c.send(alice, "note to self")
            assert (await c.next_message()).message.id == sent.id
        assert processes_using(data / "nats") and processes_using(data / "postgres")
    finally:
        assert server.stop() == 0
    deadline = time.monotonic() + 10
    while (processes_using(data / "nats") or processes_using(data / "postgres")) and (
        time.monotonic() < deadline
    ):
        await asyncio.sleep(0.05)
    assert processes_using(data / "nats") == []
    assert processes_using(data / "postgres") == []
