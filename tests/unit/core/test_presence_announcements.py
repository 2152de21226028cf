"""Presence transitions against an in-memory heartbeat store and an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from fakes import FakeClock, MemoryPresence, NoSocial

from core.presence import Presence
from core.protocol import PresenceEvent


async def settle() -> None:
    """Let every ready task run until none is left (no time passes)."""
    for _ in range(50):
        await asyncio.sleep(0)


class Watched:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = MemoryPresence()
        self.presence = Presence(self.store, NoSocial(), self.clock)
        self.events: list[PresenceEvent] = []

    def told(self) -> list[tuple[bool, int | None]]:
        return [(e.online, e.last_seen) for e in self.events]

    async def beat(self, device: str = "phone") -> None:
        await self.presence.beat("alice", device)


@pytest.fixture
async def w() -> AsyncIterator[Watched]:
    w = Watched()
    task = asyncio.ensure_future(w.presence.run())
    await settle()
    w.presence.watch(["alice"], w.events.append)
    yield w
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_first_beat_is_online_and_rebeats_tell_nothing(w: Watched) -> None:
    await w.beat()
    w.clock.now += 30_000
    await w.beat()
    await w.beat("laptop")  # a second device: alice was online already
    await settle()
    assert w.told() == [(True, None)]


async def test_expiry_is_offline_with_the_last_beat_as_last_seen(w: Watched) -> None:
    await w.beat()
    await settle()
    beat_at = w.clock.now
    w.clock.now += 60_000
    w.store.expire("alice", "phone")
    await settle()
    assert w.told() == [(True, None), (False, beat_at)]
    assert w.store.seen["alice"] == beat_at
    assert not w.presence.online("alice")


async def test_online_until_the_last_device_expires(w: Watched) -> None:
    await w.beat("phone")
    await w.beat("laptop")
    w.store.expire("alice", "phone")
    await settle()
    assert w.told() == [(True, None)]
    w.store.expire("alice", "laptop")
    await settle()
    assert [online for online, _ in w.told()] == [True, False]


async def test_back_after_the_offline_was_told_is_online_again_in_order(w: Watched) -> None:
    await w.beat()
    await settle()
    w.store.expire("alice", "phone")
    await settle()
    w.clock.now += 5_000
    await w.beat()
    await settle()
    assert [online for online, _ in w.told()] == [True, False, True]


async def test_back_before_the_offline_was_told_tells_nothing(w: Watched) -> None:
    """The entry expired and the phone beat again right after, while the offline
    announcement still waited on its last-seen write: told offline after online (or at all),
    a contact would be left seeing alice offline while she is online."""
    await w.beat()
    await settle()
    w.store.writes.clear()  # the last-seen write is slow
    w.store.expire("alice", "phone")
    await settle()
    w.clock.now += 20
    await w.beat()  # the reconnect's beat
    await settle()
    w.store.writes.set()
    await settle()
    assert w.told() == [(True, None)]
    assert w.presence.online("alice")


async def test_gone_again_while_telling_offline_tells_the_newest_last_seen(w: Watched) -> None:
    await w.beat()
    await settle()
    w.store.writes.clear()
    w.store.expire("alice", "phone")
    await settle()
    w.clock.now += 1_000
    await w.beat()
    last = w.clock.now
    w.store.expire("alice", "phone")
    w.store.writes.set()
    await settle()
    assert w.told() == [(True, None), (False, last)]
    assert w.store.seen["alice"] == last
