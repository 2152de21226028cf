"""The JetStream inbox's reads against a real nats-server: byte-bounded pages, whether more
follows, and the same answers whether the replies are parsed raw or by nats-py."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS

from core.ports import InboxEntry
from jetstream import natspy
from jetstream.inbox import JetStreamInbox
from jetstream.publisher import Publisher
from jetstream.streams import JetStreamSettings

SETTINGS = JetStreamSettings()


async def fill(nc: NATS, sizes: list[int]) -> list[bytes]:
    """``alice``'s inbox gets one message of each size, interleaved with ``bob``'s."""
    js, futures, mine = nc.jetstream(), [], []
    for i, size in enumerate(sizes):
        data = f"{i:06d}".encode() + b"x" * size
        mine.append(data)
        for user in ("alice", "bob"):
            subject = f"{SETTINGS.inbox_subject}.{user}"
            futures.append(
                await js.publish_async(subject, data, headers={"Nats-Msg-Id": f"{i}{user}"})
            )
    await asyncio.gather(*futures)
    return mine


async def make_inbox(nc: NATS, raw: bool) -> JetStreamInbox:
    publisher = Publisher(nc)
    await publisher.start()
    # require: this nats-py has the parser hook the fast path needs
    shortcuts = await natspy.check(nc, raw_replies=raw, require=True)
    inbox = JetStreamInbox(nc, nc.jetstream(), SETTINGS, publisher, shortcuts)
    await inbox.start()
    assert inbox._raw_replies == raw
    return inbox


def assert_chained(entries: list[InboxEntry], after: int) -> None:
    for entry in entries:
        assert entry.prev_seq == after < entry.seq
        after = entry.seq


@pytest.mark.parametrize("raw", [True, False], ids=["raw replies", "nats-py replies"])
async def test_byte_bounded_pages_cover_the_inbox_in_order_and_say_when_it_ends(nc, raw):
    sizes = [(i * 397) % 3000 for i in range(300)] + [20_000]  # one larger than a page
    mine = await fill(nc, sizes)
    inbox = await make_inbox(nc, raw)
    got: list[InboxEntry] = []
    after, pages = 0, 0
    while True:
        page = await inbox.read_page("alice", after, 100, 8_000)
        pages += 1
        assert page.entries, "a page always holds at least one entry"
        assert len(page.entries) <= 100
        # JetStream stops once the page reaches the bound: the last entry may cross it
        assert sum(len(e.data) for e in page.entries[:-1]) < 8_000
        assert_chained(page.entries, after)
        got += page.entries
        after = page.entries[-1].seq
        if not page.more:
            break
    assert [e.data for e in got] == mine
    assert pages > len(mine) // 100  # the byte bound cut pages short, and more said so
    end = await inbox.read_page("alice", after, 100, 8_000)
    assert end.entries == [] and not end.more
    assert await inbox.read("alice", after, 100) == []


@pytest.mark.parametrize("raw", [True, False], ids=["raw replies", "nats-py replies"])
async def test_a_batch_that_ends_exactly_at_the_inbox_end_says_no_more(nc, raw):
    mine = await fill(nc, [10] * 50)
    inbox = await make_inbox(nc, raw)
    first = await inbox.read_page("alice", 0, 25, 0)
    rest = await inbox.read_page("alice", first.entries[-1].seq, 25, 0)
    assert first.more and not rest.more
    assert [e.data for e in first.entries + rest.entries] == mine
    assert [e.data for e in await inbox.read("alice", 0, 30)] == mine[:30]
    assert await inbox.read_page("nobody", 0, 25, 0) == await inbox.read_page("alice", 10**6, 25, 0)


async def test_reads_at_once_get_their_own_replies(nc):
    mine = await fill(nc, [50] * 400)
    inbox = await make_inbox(nc, True)
    pages = await asyncio.gather(
        *(inbox.read_page("alice", 0, n, 0) for n in (1, 10, 100, 400, 1000))
    )
    assert [[e.data for e in p.entries] for p in pages] == [
        mine[:n] for n in (1, 10, 100, 400, 400)
    ]
    assert [p.more for p in pages] == [True, True, True, False, False]
