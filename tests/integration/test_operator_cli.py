"""What operators see with the standard ``nats`` CLI (docs/operations.md shows these commands)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time

import msgspec
import nats
import pytest
from helpers import device, new_user

from core.model import ChatMessage, dm_conversation
from jetchat_client import send_http


@pytest.fixture
def nats_cli(nats_url: str):
    binary = shutil.which("nats") or shutil.which("nats", path=".tools/bin")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("the nats CLI is missing: ops/test installs it")
        pytest.skip("the nats CLI is not installed (ops/test installs it)")

    def run(*args: str) -> str:
        out = subprocess.run(
            [binary, "--server", nats_url, *args], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    return run


async def test_stream_buckets_and_a_message_as_the_nats_cli_shows_them(server, nats_cli):
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    sent = await send_http(url, await device(url, alice), bob, "hello operators", "op-1")

    info = json.loads(nats_cli("stream", "info", "CHAT_INBOX", "--json"))
    config = info["config"]
    assert config["subjects"] == ["chat.inbox.*"]
    assert config["allow_direct"] is True
    assert config["republish"] == {"src": "chat.inbox.>", "dest": "chat.live.inbox.>"}
    assert info["state"]["messages"] == 2  # one copy in each participant's inbox

    buckets = nats_cli("kv", "ls", "--names").split()
    assert {"chat_sends", "chat_cursors"} <= set(buckets)

    last = json.loads(
        nats_cli("stream", "get", "CHAT_INBOX", f"--last-for=chat.inbox.{bob}", "--json")
    )
    assert last["subject"] == f"chat.inbox.{bob}"
    message = json.loads(base64.b64decode(last["data"]))
    assert (message["id"], message["text"], message["sender"]) == (
        sent.id,
        "hello operators",
        alice,
    )


async def test_a_parked_message_as_the_nats_cli_shows_it(server, nats_url, nats_cli):
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    now = int(time.time() * 1000)
    poisoned = ChatMessage(
        f"{now:012x}0000abcdef01", dm_conversation(alice, bob), alice, "d", bob, "a\0b", now
    )
    nc = await nats.connect(nats_url)
    try:
        # straight into bob's inbox: Postgres refuses the NUL, the archiver parks it
        await nc.jetstream().publish(f"chat.inbox.{bob}", msgspec.json.encode(poisoned))
    finally:
        await nc.close()
    async with asyncio.timeout(20):
        while (
            json.loads(nats_cli("stream", "info", "CHAT_DEAD", "--json"))["state"]["messages"] < 1
        ):
            await asyncio.sleep(0.1)

    info = json.loads(nats_cli("stream", "info", "CHAT_DEAD", "--json"))
    assert info["config"]["subjects"] == ["chat.dead.history"]
    assert info["config"]["max_age"] == 90 * 86_400 * 10**9  # ns

    shown = nats_cli("stream", "get", "CHAT_DEAD", "1")
    assert f"Jetchat-Message-Id: {poisoned.id}" in shown
    assert "Jetchat-Reason: DataError: PostgreSQL text fields cannot contain NUL" in shown
    parked = json.loads(nats_cli("stream", "get", "CHAT_DEAD", "1", "--json"))
    assert msgspec.json.decode(base64.b64decode(parked["data"]), type=ChatMessage) == poisoned

    nats_cli("stream", "rmm", "CHAT_DEAD", "1", "-f")
    assert json.loads(nats_cli("stream", "info", "CHAT_DEAD", "--json"))["state"]["messages"] == 0
