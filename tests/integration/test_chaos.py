"""Crashes: nothing acknowledged is lost, duplicated or reordered (real SIGKILL)."""

from __future__ import annotations

import asyncio

import pytest
from helpers import device, new_user

from jetchat_client import ChatClient

pytestmark = pytest.mark.chaos


async def test_sigkill_while_500_messages_are_sent(spawn):
    server = spawn()
    url = server.base_url
    alice, bob = await new_user(url, "alice"), await new_user(url, "bob")
    alice_token, bob_token = await device(url, alice), await device(url, bob)

    sent: dict[str, str] = {}  # client id -> server id, for each "sent" the client got
    async with ChatClient(url, alice_token, cursor=0) as a:

        async def send(i: int) -> None:
            result = await a.send(bob, f"m{i}", client_id=f"c{i}", timeout=90)
            sent[result.client_id] = result.id

        sending = asyncio.gather(*(send(i) for i in range(500)))
        async with asyncio.timeout(30):
            while len(sent) < 150:
                await asyncio.sleep(0.001)
        server.kill()
        before_kill = dict(sent)
        assert len(before_kill) < 500, "the kill came too late to test anything"
        spawn(port=server.port)  # same address: the client reconnects and resends
        await sending

    assert len(sent) == 500
    async with ChatClient(url, bob_token, cursor=0) as b:
        async with asyncio.timeout(30):
            while len(b._seen) < 500:
                await b.next_message()
        await b.caught_up.wait()
        conv = b.conversation(f"dm.{min(alice, bob)}.{max(alice, bob)}")
    # exactly once after de-duplication by id; and the one order is the id order
    assert sorted(m.id for m in conv) == sorted(sent.values())
    assert len({m.client_id for m in conv}) == 500
    assert all(sent[m.client_id] == m.id for m in conv)
    # what was acknowledged before the crash kept its order
    acked_order = [m.client_id for m in conv if m.client_id in before_kill]
    assert acked_order == sorted(before_kill, key=lambda c: int(c[1:]))
