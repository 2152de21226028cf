"""The rate-limiter contract, run against every implementation: Redis (production, a real
redis-server) and in-process (the embedded default), both on an injected clock so that every
number below is exact. One test checks the Redis limiter on Redis's own clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from core.errors import ChatError, ErrorCode
from core.ports import Rate, RateLimiter
from core.ratelimit import InProcessRateLimiter
from embedded import free_port
from storage.redis_limits import RedisRateLimiter


class Clock:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_000

    def now_ms(self) -> int:
        return self.ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["redis", "inprocess"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """The Redis URL, or None in process (only the chosen backend's server is started)."""
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


@pytest.fixture
async def limiter(backend: str | None, clock: Clock) -> AsyncIterator[RateLimiter]:
    if backend is None:
        yield InProcessRateLimiter(clock)
        return
    redis_limiter = RedisRateLimiter.from_url(backend, clock=clock)
    yield redis_limiter
    await redis_limiter.close()


FIVE_PER_S = Rate(burst=5, interval_ms=200)


async def test_a_burst_then_one_per_interval(limiter: RateLimiter, clock: Clock):
    for _ in range(5):
        assert await limiter.hit([("k", FIVE_PER_S)]) == (1, 0)
    assert await limiter.hit([("k", FIVE_PER_S)]) == (0, 200)
    clock.ms += 150
    assert await limiter.hit([("k", FIVE_PER_S)]) == (0, 50)
    clock.ms += 50
    assert await limiter.hit([("k", FIVE_PER_S)]) == (1, 0)
    assert await limiter.hit([("k", FIVE_PER_S)]) == (0, 200)
    clock.ms += 1000  # back to a full burst
    assert await limiter.hit([("k", FIVE_PER_S)], cost=9) == (5, 200)


async def test_keys_are_independent(limiter: RateLimiter):
    assert await limiter.hit([("a", FIVE_PER_S)], cost=5) == (5, 0)
    assert await limiter.hit([("b", FIVE_PER_S)], cost=5) == (5, 0)


async def test_several_keys_grant_what_all_allow_and_charge_all(limiter: RateLimiter, clock: Clock):
    wide, narrow = Rate(burst=10, interval_ms=100), Rate(burst=3, interval_ms=1000)
    assert await limiter.hit([("user", wide), ("device", narrow)], cost=5) == (3, 1000)
    assert await limiter.hit([("user", wide)], cost=10) == (7, 100)  # the 3 were charged here too
    # refused on one key: nothing is charged on the other
    assert await limiter.hit([("other", wide), ("device", narrow)]) == (0, 1000)
    assert await limiter.hit([("other", wide)], cost=10) == (10, 0)
    clock.ms += 1000
    assert await limiter.hit([("user", wide), ("device", narrow)], cost=2) == (1, 1000)


async def test_concurrent_hits_never_overdraw(limiter: RateLimiter):
    results = await asyncio.gather(*(limiter.hit([("k", FIVE_PER_S)]) for _ in range(20)))
    assert sum(r.granted for r in results) == 5


TEN_PER_15_MIN = Rate(burst=10, interval_ms=90_000)
MINUTE, HOUR = 60_000, 3_600_000


async def test_failures_lock_out_growing_and_reset(limiter: RateLimiter, clock: Clock):
    fail = lambda: limiter.fail(["acct", "addr"], TEN_PER_15_MIN, MINUTE, HOUR)  # noqa: E731
    for _ in range(9):
        assert await fail() == 0
    assert await limiter.locked(["acct"]) == 0
    assert await fail() == MINUTE  # the tenth uses the budget up
    clock.ms += 20_000
    assert await limiter.locked(["acct", "x"]) == MINUTE - 20_000
    clock.ms += 40_000
    assert await limiter.locked(["acct"]) == 0
    assert await fail() == 2 * MINUTE  # again before the budget refilled: twice as long
    clock.ms += 2 * MINUTE
    assert await fail() == 4 * MINUTE
    await limiter.reset("acct")
    assert await limiter.locked(["acct"]) == 0
    assert await limiter.locked(["addr", "acct"]) == 4 * MINUTE  # the other key kept its own
    assert await limiter.locked(["acct", "addr"]) == 4 * MINUTE


async def test_lockouts_stop_growing_at_the_maximum(limiter: RateLimiter, clock: Clock):
    for _ in range(10):
        await limiter.fail(["k"], TEN_PER_15_MIN, MINUTE, HOUR)
    locks, failures = [], []
    for _ in range(8):
        clock.ms += await limiter.locked(["k"])
        # the lock let the budget refill a little: those failures pass, the next one locks
        n = 1
        while not (lock := await limiter.fail(["k"], TEN_PER_15_MIN, MINUTE, HOUR)):
            n += 1
        locks.append(lock)
        failures.append(n)
    # locks double up to the hour; after a long one the budget refilled, 10 failures again
    assert failures == [1, 1, 2, 6, 10, 10, 10, 10]
    assert locks == [2 * MINUTE, 4 * MINUTE, 8 * MINUTE, 16 * MINUTE, 32 * MINUTE] + [HOUR] * 3


async def test_failures_are_forgotten_once_the_budget_refills(limiter: RateLimiter, clock: Clock):
    for _ in range(10):
        await limiter.fail(["k"], TEN_PER_15_MIN, MINUTE, HOUR)
    clock.ms += MINUTE + 15 * MINUTE  # the lock, then a whole window without failures
    for _ in range(9):
        assert await limiter.fail(["k"], TEN_PER_15_MIN, MINUTE, HOUR) == 0
    assert await limiter.fail(["k"], TEN_PER_15_MIN, MINUTE, HOUR) == MINUTE  # level 0 again


async def test_leases_count_up_to_the_limit(limiter: RateLimiter, clock: Clock):
    assert await limiter.acquire("u", "c1", 2, 10_000)
    assert await limiter.acquire("u", "c2", 2, 10_000)
    assert not await limiter.acquire("u", "c3", 2, 10_000)
    assert await limiter.acquire("u", "c2", 2, 10_000)  # renewing one already counted
    assert await limiter.acquire("v", "c3", 2, 10_000)  # another key
    await limiter.release("u", "c1")
    assert await limiter.acquire("u", "c3", 2, 10_000)
    assert not await limiter.acquire("u", "c4", 2, 10_000)


async def test_leases_expire_unless_renewed(limiter: RateLimiter, clock: Clock):
    assert await limiter.acquire("u", "c1", 2, 10_000)
    assert await limiter.acquire("u", "c2", 2, 10_000)
    clock.ms += 6_000
    assert await limiter.acquire("u", "c1", 2, 10_000)  # renewed
    clock.ms += 5_000  # c2's lease ran out (its process died without releasing)
    assert await limiter.acquire("u", "c3", 2, 10_000)
    assert not await limiter.acquire("u", "c4", 2, 10_000)


async def test_redis_on_its_own_clock(redis_url: str):
    limiter = RedisRateLimiter.from_url(redis_url)
    try:
        tenth = Rate(burst=1, interval_ms=100)
        assert (await limiter.hit([("k", tenth)])).granted == 1
        refused = await limiter.hit([("k", tenth)])
        assert refused.granted == 0 and 0 < refused.retry_after_ms <= 100
        await asyncio.sleep(refused.retry_after_ms / 1000 + 0.01)
        assert (await limiter.hit([("k", tenth)])).granted == 1
    finally:
        await limiter.close()


async def test_redis_down_is_unavailable():
    limiter = RedisRateLimiter.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    try:
        for call in (
            limiter.hit([("k", FIVE_PER_S)]),
            limiter.fail(["k"], FIVE_PER_S, 1, 2),
            limiter.locked(["k"]),
            limiter.acquire("k", "m", 1, 1000),
        ):
            with pytest.raises(ChatError) as caught:
                await call
            assert caught.value.code is ErrorCode.UNAVAILABLE
    finally:
        await limiter.close()
