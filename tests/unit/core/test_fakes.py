"""The fakes behave as the real adapters do where core tests rely on it."""

from __future__ import annotations

from fakes import FakeClock, MemoryInbox


async def test_inbox_drops_a_resend_inside_the_duplicate_window_and_stores_one_after() -> None:
    # as CHAT_INBOX's duplicate_window (120 s): a repeated Nats-Msg-Id is dropped while its
    # first copy is younger than the window, and stored again once the window has passed
    clock = FakeClock()
    inbox = MemoryInbox(clock)
    await inbox.append([("bob", "m1.bob", b"first")])
    clock.now += 119_999
    await inbox.append([("bob", "m1.bob", b"resend")])
    assert [data for _, _, data in inbox.entries] == [b"first"]
    clock.now += 1
    await inbox.append([("bob", "m1.bob", b"late resend")])
    assert [data for _, _, data in inbox.entries] == [b"first", b"late resend"]


async def test_inbox_window_counts_from_the_stored_copy_not_from_dropped_resends() -> None:
    clock = FakeClock()
    inbox = MemoryInbox(clock, duplicate_window_s=10)
    await inbox.append([("bob", "k", b"a")])
    clock.now += 9_000
    await inbox.append([("bob", "k", b"dropped")])  # does not restart the window
    clock.now += 1_000
    await inbox.append([("bob", "k", b"b")])
    assert [data for _, _, data in inbox.entries] == [b"a", b"b"]
