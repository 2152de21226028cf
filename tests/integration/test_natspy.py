"""The nats-py shim (jetstream.natspy) against the installed nats-py and a real nats-server:
its start-up check, its refusal, and delivery and catch-up on every mix of shortcuts and
their public-API fallbacks."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from core.ports import InboxEntry
from jetstream import natspy
from jetstream.inbox import JetStreamInbox
from jetstream.publisher import Publisher
from jetstream.streams import JetStreamSettings

SETTINGS = JetStreamSettings()


async def test_the_installed_nats_py_has_every_shortcut(nc, caplog):
    caplog.set_level(logging.INFO, logger="jetstream.natspy")
    before, subs = dict(nc.stats), set(nc._subs)
    shortcuts = await natspy.check(nc, require=True)
    assert shortcuts.raw_replies and shortcuts.dispatch_subscriptions
    assert shortcuts.version == natspy.VERSION != "unknown"
    [record] = caplog.records  # one line at start, saying which paths are taken
    assert record.levelno == logging.INFO
    assert natspy.VERSION in record.getMessage()
    assert "parse replies raw" in record.getMessage()
    assert "dispatch in the reader" in record.getMessage()
    # the probes left nothing behind: no wrapped parser hook, no subscription
    assert "_process_msg" not in vars(nc)
    assert nc.stats["in_msgs"] > before["in_msgs"]
    assert set(nc._subs) == subs


async def test_a_changed_nats_py_gets_the_fallbacks_or_one_clear_refusal(nc, caplog):
    async def process_msg(sid: int, subject: bytes, reply: bytes, payload: bytes) -> None:
        raise AssertionError("not called by the probe")

    subscribe = nc.subscribe

    async def subscribe_without_future(subject: str, queue: str = "", cb=None):  # type: ignore[no-untyped-def]
        return await subscribe(subject, queue, cb)

    nc._process_msg = process_msg  # what a nats-py release could look like
    nc.subscribe = subscribe_without_future
    try:
        with pytest.raises(natspy.NatsPyChanged) as refused:
            await natspy.check(nc, require=True)
        message = str(refused.value)
        assert f"nats-py {natspy.VERSION}" in message
        assert "Client._process_msg takes (sid, subject, reply, payload)" in message
        assert "Client.subscribe takes no future=" in message

        caplog.set_level(logging.INFO, logger="jetstream.natspy")
        shortcuts = await natspy.check(nc)
        assert not shortcuts.raw_replies and not shortcuts.dispatch_subscriptions
        [record] = caplog.records
        assert record.levelno == logging.WARNING
        assert natspy.VERSION in record.getMessage()
        assert "take nats-py messages" in record.getMessage()
        assert "use callback tasks" in record.getMessage()
    finally:
        del nc._process_msg, nc.subscribe


@pytest.mark.parametrize(
    ("raw", "dispatch"),
    [(True, True), (False, True), (True, False), (False, False)],
    ids=["shortcuts", "reads fall back", "live falls back", "both fall back"],
)
async def test_delivery_and_catch_up_work_on_every_path(nc, raw, dispatch):
    publisher = Publisher(nc)
    await publisher.start()
    shortcuts = await natspy.check(
        nc, raw_replies=raw, dispatch_subscriptions=dispatch, require=True
    )
    inbox = JetStreamInbox(nc, nc.jetstream(), SETTINGS, publisher, shortcuts)
    await inbox.start()
    assert inbox._raw_replies == raw

    # stored before the device connects: a catch-up over several reads
    old = [f"old {i}".encode() for i in range(700)]
    await inbox.append([(u, f"o{i}.{u}", d) for i, d in enumerate(old) for u in ("alice", "bob")])

    live: list[InboxEntry] = []
    events: list[bytes] = []
    arrived = asyncio.Event()

    def on_entry(entry: InboxEntry) -> None:
        live.append(entry)
        arrived.set()

    def on_event(event: bytes) -> None:
        events.append(event)
        arrived.set()

    unwatch = await inbox.watch("alice", on_entry, on_event)
    sub = inbox._watchers["alice"].sub
    assert sub is not None
    # the path taken: no task and no queue with the shortcut, a callback task without it
    assert (sub._pending_queue is None) == dispatch
    assert (sub._wait_for_msgs_task is None) == dispatch

    caught_up: list[InboxEntry] = []
    after = 0
    while True:
        page = await inbox.read_page("alice", after, 256, 1 << 20)
        caught_up += page.entries
        if page.entries:
            after = page.entries[-1].seq
        if not page.more:
            break
    assert [e.data for e in caught_up] == old
    prev = 0
    for entry in caught_up:
        assert entry.prev_seq == prev < entry.seq
        prev = entry.seq

    new = [f"new {i}".encode() for i in range(50)]
    await inbox.append([(u, f"n{i}.{u}", d) for i, d in enumerate(new) for u in ("alice", "bob")])
    await inbox.notify(["alice", "bob"], b'{"type":"typing"}')
    async with asyncio.timeout(5):
        while len(live) < len(new) or not events:
            arrived.clear()
            await arrived.wait()
    # live entries in order, each chained to the one before it on alice's subject, the first
    # to the end of the catch-up: no gap and no repeat at the switch
    assert [e.data for e in live] == new
    assert live[0].prev_seq == caught_up[-1].seq
    for before, entry in itertools.pairwise(live):
        assert entry.prev_seq == before.seq < entry.seq
    assert events == [b'{"type":"typing"}']
    # and what came live reads back the same from the stream
    assert await inbox.read("alice", after, 100) == live

    await unwatch()
    assert "alice" not in inbox._watchers
    await inbox.notify(["alice"], b"after")
    await nc.flush()
    await asyncio.sleep(0.05)
    assert events == [b'{"type":"typing"}']
