"""The one supervisor of a process's background work: every long-lived task runs under it.

A worker is a name and a coroutine function. The supervisor runs ``await factory()`` and:

- on **any exception** logs it once, with its traceback and the delay before the restart, and
  runs the factory again after an exponential backoff with jitter (0.1 s doubling to 30 s;
  back to 0.1 s once an attempt has run ``healthy_after_s`` without failing);
- when the factory **returns**, the worker is done, unless it was started ``forever`` (a watch
  loop whose iterator ended): then that counts as a failure and it is restarted;
- it **fails for good** when it raises :class:`GiveUp` (a restart cannot fix it: a
  configuration error), or fails more than ``max_restarts`` times within
  ``restart_window_s`` when started with a limit (``jetchat archiver`` does, and exits
  non-zero: its process manager restarts it and the operator sees it);
- **cancellation** (:meth:`Supervisor.stop`) stops it cleanly, wherever it is.

Each worker's state (running, backing-off with since when and why, stopped, failed) is exported
as ``jetchat_worker_up{worker}`` and ``jetchat_worker_restarts_total{worker}``, and readiness
fails while a worker has been down longer than a setting (:meth:`Supervisor.readiness`).

Before it, background tasks were created in a dozen places with four failure policies (log and
close, log only, swallow, never retrieve the error); an archiver whose fetch raised once during
a NATS node failure ended for good while the process kept saying it was ready.

Pure asyncio (no NATS, no Litestar); the clock, sleep and randomness are injected so the tests
drive time by hand.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from core import metrics

log = logging.getLogger(__name__)

Factory = Callable[[], Coroutine[Any, Any, None]]


class GiveUp(Exception):
    """Raised by a worker whose failure no restart can fix (a configuration error): it fails
    for good at once. Raise it ``from`` the cause."""


class WorkerState(enum.Enum):
    RUNNING = "running"
    BACKING_OFF = "backing-off"  # failed; waiting to be restarted
    STOPPED = "stopped"  # returned (done), or cancelled by stop()
    FAILED = "failed"  # failed for good: no more restarts


@dataclass(frozen=True)
class Backoff:
    """Delays between restarts. ``delay(n)`` after the n-th failure in a row:
    ``first_s * factor**(n-1)``, at most ``max_s``, cut by up to ``jitter`` (a fraction) at
    random so workers that failed together (one NATS outage) do not come back in step."""

    first_s: float = 0.1
    """A first failure is usually a blip (a reconnect, a leader election): retry soon."""
    max_s: float = 30.0
    """A long outage costs one attempt and one log line per 30 s at most."""
    factor: float = 2.0
    jitter: float = 0.5
    healthy_after_s: float = 60.0
    """An attempt that ran this long before failing ends the streak: the next delay is
    ``first_s`` again and the worker's down time counts from this failure."""

    def delay(self, failures: int, rand: float) -> float:
        # the exponent is bounded: a day-long outage is thousands of failures in a row, and
        # 2.0 ** 1100 overflows
        base = min(self.max_s, self.first_s * self.factor ** min(max(0, failures - 1), 64))
        return base * (1.0 - self.jitter * rand)


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    state: WorkerState
    restarts: int
    """Restarts since the worker was started (``jetchat_worker_restarts_total``)."""
    down_since: float | None
    """Supervisor clock time the current streak of failures began; None while running."""
    last_error: BaseException | None
    """What ended the last attempt (None: it returned, or none ended yet)."""

    @property
    def reason(self) -> str:
        if self.last_error is None:
            return "returned"
        return type(self.last_error).__name__


class _Worker:
    def __init__(
        self,
        name: str,
        factory: Factory,
        forever: bool,
        max_restarts: int | None,
        restart_window_s: float,
    ) -> None:
        self.name = name
        self.factory = factory
        self.forever = forever
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.state = WorkerState.RUNNING
        self.restarts = 0
        self.failures = 0  # in a row, for the backoff
        self.recent: collections.deque[float] = collections.deque()  # failure times, for the limit
        self.down_since: float | None = None
        self.last_error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None

    def status(self) -> WorkerStatus:
        running = self.state is WorkerState.RUNNING
        return WorkerStatus(
            self.name,
            self.state,
            self.restarts,
            None if running else self.down_since,
            self.last_error,
        )


class Supervisor:
    def __init__(
        self,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._workers: dict[str, _Worker] = {}
        self._stopping = False
        self._failed = asyncio.Event()

    def start(
        self,
        name: str,
        factory: Factory,
        *,
        forever: bool = False,
        max_restarts: int | None = None,
        restart_window_s: float = 600.0,
    ) -> None:
        """Run ``await factory()`` as worker ``name`` (see the module's docstring for the
        policy). A name runs once at a time; a worker that stopped or failed may be started
        again."""
        if self._stopping:
            raise RuntimeError(f"supervisor stopped: cannot start {name!r}")
        current = self._workers.get(name)
        if current is not None and current.state in (WorkerState.RUNNING, WorkerState.BACKING_OFF):
            raise ValueError(f"worker {name!r} is already running")
        worker = _Worker(name, factory, forever, max_restarts, restart_window_s)
        self._workers[name] = worker
        metrics.WORKER_RESTARTS.labels(name)  # exported (0) from the start
        worker.task = asyncio.create_task(self._supervise(worker), name=f"worker:{name}")

    def status(self, name: str) -> WorkerStatus:
        return self._workers[name].status()

    def statuses(self) -> list[WorkerStatus]:
        return [w.status() for w in self._workers.values()]

    def readiness(self, down_after_s: float) -> dict[str, str]:
        """``worker:<name>`` -> "ok", or why not: down (backing off) for longer than
        ``down_after_s``, or failed for good. A worker down for less is "ok": a restart after
        a blip should not take the process out of its load balancer. Stopped workers (done)
        are left out."""
        now = self._clock()
        checks: dict[str, str] = {}
        for w in self._workers.values():
            s = w.status()
            if s.state is WorkerState.FAILED:
                checks[f"worker:{s.name}"] = f"failed: {s.reason}"
            elif s.state is WorkerState.BACKING_OFF and s.down_since is not None:
                down = now - s.down_since
                ok = down <= down_after_s
                checks[f"worker:{s.name}"] = "ok" if ok else f"down for {down:.1f} s: {s.reason}"
            elif s.state is WorkerState.RUNNING:
                checks[f"worker:{s.name}"] = "ok"
        return checks

    async def failed(self) -> WorkerStatus:
        """Wait until a worker fails for good; its status."""
        await self._failed.wait()
        return next(s for s in self.statuses() if s.state is WorkerState.FAILED)

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel every worker and wait for them, ``timeout`` seconds at most: a worker that
        does not end on cancellation must not hold up the process's exit (it is logged)."""
        self._stopping = True
        tasks = [w.task for w in self._workers.values() if w.task is not None and not w.task.done()]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=timeout)
        for task in stuck:
            log.error("worker did not stop", extra={"worker": task.get_name()})

    async def _supervise(self, w: _Worker) -> None:
        me = asyncio.current_task()
        assert me is not None
        up = metrics.WORKER_UP.labels(w.name)
        try:
            while True:
                w.state = WorkerState.RUNNING
                up.set(1)
                started = self._clock()
                error: BaseException | None
                try:
                    await w.factory()
                except asyncio.CancelledError as exc:
                    if me.cancelling():
                        raise
                    error = exc  # a library's own future was cancelled, not this worker
                except Exception as exc:
                    error = exc
                else:
                    if not w.forever:
                        w.state = WorkerState.STOPPED
                        log.info("worker done", extra={"worker": w.name})
                        return
                    error = None
                up.set(0)
                if not await self._after_failure(w, error, started):
                    return
                w.restarts += 1
                metrics.WORKER_RESTARTS.labels(w.name).inc()
        except asyncio.CancelledError:
            w.state = WorkerState.STOPPED
            raise
        finally:
            up.set(0)

    async def _after_failure(self, w: _Worker, error: BaseException | None, started: float) -> bool:
        """Record a failed attempt; wait out the backoff. False: failed for good."""
        now = self._clock()
        if now - started >= self._backoff.healthy_after_s:
            w.failures, w.down_since = 0, None
        w.failures += 1
        if w.down_since is None:
            w.down_since = now
        w.last_error = error
        w.recent.append(now)
        while w.recent and w.recent[0] < now - w.restart_window_s:
            w.recent.popleft()
        what = "worker returned" if error is None else "worker failed"
        context = {"worker": w.name, "restarts": w.restarts, "down_s": round(now - w.down_since, 3)}
        too_many = w.max_restarts is not None and len(w.recent) > w.max_restarts
        if isinstance(error, GiveUp) or too_many:
            w.state = WorkerState.FAILED
            why = "cannot be fixed by a restart" if not too_many else "too many restarts"
            log.error(
                f"{what}; giving up: {why}",
                extra={**context, "failures_in_window": len(w.recent)},
                exc_info=error,
            )
            self._failed.set()
            return False
        delay = self._backoff.delay(w.failures, self._rand())
        w.state = WorkerState.BACKING_OFF
        log.error(
            f"{what}; restarting",
            extra={**context, "restart_in_s": round(delay, 3)},
            exc_info=error,
        )
        await self._sleep(delay)
        return True
