"""The supervisor's policy with a hand-driven clock: nothing here sleeps."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import REGISTRY

from core.supervisor import Backoff, GiveUp, Supervisor, WorkerState


class FakeTime:
    """The supervisor's clock and sleep: sleeps wait until the test moves time past them."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._waiting: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for entry in list(self._waiting):
            deadline, future = entry
            if deadline <= self.now + 1e-9:
                self._waiting.remove(entry)
                if not future.done():
                    future.set_result(None)
        await settle()


async def settle() -> None:
    """Let every ready task run until they all wait again."""
    for _ in range(20):
        await asyncio.sleep(0)


class Flaky:
    """A worker factory: each attempt fails with the next error given (or returns, for None)
    until they run out; then it runs until cancelled, or until released (raising ``crash``
    if set)."""

    def __init__(self, *outcomes: BaseException | None) -> None:
        self.outcomes = list(outcomes)
        self.attempts = 0
        self.cancelled = 0
        self.release = asyncio.Event()
        self.crash: BaseException | None = None

    async def __call__(self) -> None:
        self.attempts += 1
        if self.outcomes:
            outcome = self.outcomes.pop(0)
            if outcome is not None:
                raise outcome
            return
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.crash is not None:
            raise self.crash


def sample(name: str, worker: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"worker": worker})


@pytest.fixture
def time_() -> FakeTime:
    return FakeTime()


def supervisor(t: FakeTime, rand: float = 0.0, **backoff: float) -> Supervisor:
    return Supervisor(backoff=Backoff(**backoff), clock=t.clock, sleep=t.sleep, rand=lambda: rand)


async def test_restarts_on_any_exception_with_exponential_backoff(time_, caplog):
    caplog.set_level(logging.ERROR, logger="core.supervisor")
    sup = supervisor(time_)
    work = Flaky(RuntimeError("one"), ConnectionError("two"), KeyError("three"))
    sup.start("flaky", work)
    await settle()
    assert work.attempts == 1 and time_.sleeps == [0.1]
    s = sup.status("flaky")
    assert s.state is WorkerState.BACKING_OFF
    assert (s.restarts, s.down_since, s.reason) == (0, 0.0, "RuntimeError")
    assert sample("jetchat_worker_up", "flaky") == 0
    await time_.advance(0.1)
    await time_.advance(0.2)
    await time_.advance(0.4)
    assert work.attempts == 4 and time_.sleeps == [0.1, 0.2, 0.4]
    s = sup.status("flaky")
    assert (s.state, s.restarts, s.down_since) == (WorkerState.RUNNING, 3, None)
    assert sample("jetchat_worker_up", "flaky") == 1
    assert sample("jetchat_worker_restarts_total", "flaky") == 3
    # each failure logged once, with its traceback and the delay
    failures = [r for r in caplog.records if r.getMessage() == "worker failed; restarting"]
    assert [r.exc_info[1].args[0] for r in failures] == ["one", "two", "three"]
    assert [r.restart_in_s for r in failures] == [0.1, 0.2, 0.4]
    await sup.stop()
    assert work.cancelled == 1
    assert sup.status("flaky").state is WorkerState.STOPPED
    assert sample("jetchat_worker_up", "flaky") == 0


async def test_backoff_is_capped_and_jittered(time_):
    sup = supervisor(time_, rand=1.0, first_s=1.0, max_s=4.0, jitter=0.5)
    work = Flaky(*[RuntimeError()] * 5)
    sup.start("capped", work)
    await settle()
    for _ in range(5):
        await time_.advance(time_.sleeps[-1])
    # 1, 2, 4, 4, 4 cut by half (the largest jitter)
    assert time_.sleeps == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert Backoff().delay(30, 0.0) == Backoff().delay(100_000, 0.0) == 30.0
    await sup.stop()


async def test_an_attempt_that_ran_well_resets_the_backoff_and_the_down_time(time_):
    sup = supervisor(time_, healthy_after_s=60.0)
    work = Flaky(RuntimeError(), RuntimeError())
    sup.start("w", work)
    await settle()
    await time_.advance(0.1)  # second attempt fails at once: the streak goes on
    assert time_.sleeps == [0.1, 0.2] and sup.status("w").down_since == 0.0
    await time_.advance(0.2)
    await time_.advance(61)  # third attempt runs a minute, then fails
    work.crash = RuntimeError()
    work.release.set()
    await settle()
    assert time_.sleeps == [0.1, 0.2, 0.1]
    assert sup.status("w").down_since == time_.now
    await sup.stop()


async def test_returning_is_done_unless_forever(time_):
    sup = supervisor(time_)
    once = Flaky(None)
    sup.start("once", once)
    await settle()
    assert sup.status("once").state is WorkerState.STOPPED and once.attempts == 1
    assert "worker:once" not in sup.readiness(10)
    sup.start("once", once)  # a stopped worker may be started again
    await settle()
    assert once.attempts == 2 and sup.status("once").state is WorkerState.RUNNING

    watch = Flaky(None)  # e.g. a watch whose iterator ended
    sup.start("watch", watch, forever=True)
    await settle()
    s = sup.status("watch")
    assert (s.state, s.reason) == (WorkerState.BACKING_OFF, "returned")
    await time_.advance(0.1)
    assert watch.attempts == 2 and sup.status("watch").state is WorkerState.RUNNING
    with pytest.raises(ValueError, match="already running"):
        sup.start("watch", watch)
    await sup.stop()


async def test_too_many_restarts_within_the_window_fail_for_good(time_):
    sup = supervisor(time_)
    work = Flaky(*[OSError("down")] * 10)
    sup.start("archiver", work, max_restarts=2, restart_window_s=10)
    waiting = asyncio.ensure_future(sup.failed())
    await settle()
    await time_.advance(0.1)
    await time_.advance(0.2)
    assert waiting.done()
    status = waiting.result()
    assert (status.name, status.state, status.restarts) == ("archiver", WorkerState.FAILED, 2)
    assert work.attempts == 3
    assert sup.readiness(10) == {"worker:archiver": "failed: OSError"}
    await time_.advance(100)
    assert work.attempts == 3  # no more restarts


async def test_failures_spread_over_more_than_the_window_are_not_too_many(time_):
    sup = supervisor(time_, first_s=6.0, max_s=6.0, jitter=0.0)
    work = Flaky(*[OSError()] * 5)  # failing at 0, 6, 12, 18, 24 s: never 3 within 10 s
    sup.start("slow", work, max_restarts=2, restart_window_s=10)
    await settle()
    for _ in range(5):
        await time_.advance(6)
    assert work.attempts == 6 and sup.status("slow").state is WorkerState.RUNNING
    await sup.stop()


async def test_give_up_fails_for_good_at_once(time_, caplog):
    sup = supervisor(time_)
    work = Flaky(GiveUp("consumer is push-based"))
    sup.start("archiver", work)
    await settle()
    assert sup.status("archiver").state is WorkerState.FAILED
    assert (await sup.failed()).reason == "GiveUp"
    assert any("giving up" in r.getMessage() for r in caplog.records)
    assert time_.sleeps == []


async def test_readiness_names_a_worker_down_longer_than_the_setting(time_):
    sup = supervisor(time_, first_s=5.0, max_s=5.0, jitter=0.0)
    ok = Flaky()
    down = Flaky(*[TimeoutError()] * 10)
    sup.start("presence", ok)
    sup.start("archiver", down)
    await settle()
    assert sup.readiness(10) == {"worker:presence": "ok", "worker:archiver": "ok"}
    await time_.advance(5)  # restarted, failed again: still the same streak
    await time_.advance(5)
    await time_.advance(2.3)
    assert sup.readiness(10) == {
        "worker:presence": "ok",
        "worker:archiver": "down for 12.3 s: TimeoutError",
    }
    down.outcomes.clear()
    await time_.advance(5)
    assert sup.readiness(10)["worker:archiver"] == "ok"
    await sup.stop()


async def test_a_cancellation_that_is_not_a_stop_is_a_failure(time_):
    sup = supervisor(time_)
    work = Flaky(asyncio.CancelledError())  # e.g. a library's future cancelled under it
    sup.start("w", work)
    await settle()
    assert sup.status("w").state is WorkerState.BACKING_OFF
    await time_.advance(0.1)
    assert sup.status("w").state is WorkerState.RUNNING
    await sup.stop()


async def test_stop_cancels_running_and_backing_off_workers_and_is_bounded(time_, caplog):
    sup = supervisor(time_)
    running, backing_off = Flaky(), Flaky(RuntimeError())
    sup.start("running", running)
    sup.start("backing-off", backing_off)

    gate = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await gate.wait()  # a worker that does not end when cancelled

    sup.start("stubborn", stubborn)
    await settle()
    await sup.stop(timeout=0)
    await settle()
    assert sup.status("running").state is WorkerState.STOPPED
    assert sup.status("backing-off").state is WorkerState.STOPPED
    assert any(r.getMessage() == "worker did not stop" for r in caplog.records)
    with pytest.raises(RuntimeError):
        sup.start("late", Flaky())
    gate.set()
    await settle()
    assert sup.status("stubborn").state is WorkerState.STOPPED
