"""The registry of local sessions closes those whose token expired, from one heap of expiries
(core/sessions.py), on the injected clock."""

from __future__ import annotations

from typing import cast

from fakes import FakeClock

from core.close import CloseCode
from core.model import Device
from core.session import DeviceSession
from core.sessions import LocalSessions


class Session:
    """What the registry uses of a session: its device, and closing it."""

    def __init__(self, device_id: str, expires_at: int) -> None:
        self.device = Device(device_id, "alice", "phone", b"", 0, expires_at)
        self.closed: list[tuple[CloseCode, str]] = []

    def close_soon(self, code: CloseCode, reason: str) -> None:
        self.closed.append((code, reason))


def attach(sessions: LocalSessions, device_id: str, expires_at: int) -> Session:
    session = Session(device_id, expires_at)
    sessions.attach(cast(DeviceSession, session))
    return session


async def test_sessions_are_closed_with_4001_when_their_token_expires_and_not_before():
    clock = FakeClock(1_000)
    sessions = LocalSessions(1.0, clock)
    assert sessions.close_expired() is None  # nothing to wait for
    a1, a2 = attach(sessions, "a", 3_000), attach(sessions, "a", 3_000)  # one device, twice
    b = attach(sessions, "b", 5_000)
    gone = attach(sessions, "c", 2_000)
    sessions.detach(cast(DeviceSession, gone))
    assert sessions.close_expired() == 1.0  # the next, c's, though it left
    clock.now = 2_999
    assert sessions.close_expired() == 0.001
    assert a1.closed == a2.closed == b.closed == gone.closed == []
    clock.now = 3_000
    assert sessions.close_expired() == 2.0
    assert a1.closed == a2.closed == [(CloseCode.REVOKED, "token expired; log in again")]
    assert b.closed == []
    clock.now = 9_000
    assert sessions.close_expired() is None
    assert len(b.closed) == 1 and gone.closed == []


async def test_the_heap_keeps_only_devices_still_here_when_many_left():
    sessions = LocalSessions(1.0, FakeClock(0))
    for n in range(500):  # polls come and go: each attaches and detaches
        sessions.detach(cast(DeviceSession, attach(sessions, f"d{n}", 10_000 + n)))
    stays = attach(sessions, "stays", 50_000)
    assert len(sessions._expiries) < 100
    assert ("stays" in {d for _, d in sessions._expiries}) and stays.closed == []
