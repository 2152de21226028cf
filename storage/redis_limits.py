"""Rate limits in Redis, shared by every jetchat process that points at the same server
(``JETCHAT_REDIS_URL``): the production :class:`core.ports.RateLimiter`.

Each operation is one Lua script (one round trip, atomic: Redis runs a script alone), so two
processes taking the last event of a key cannot both get it. Rate limits are GCRA (the
generic cell rate algorithm): one integer per key, the theoretical arrival time of the next
event, which expires when the key is back to a full burst, so an idle key costs nothing. The
time is Redis's own (``TIME``), one clock for every process; the tests may inject one.

The arithmetic is the in-process limiter's (core/ratelimit.py), integer milliseconds both;
one contract suite checks both (tests/integration/test_rate_limit_contract.py).

Multi-key scripts (a user's and a device's limit at once) need their keys on one server: a
Redis Cluster would need hash tags; jetchat targets one Redis (with a replica for failover).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.errors import ChatError, ErrorCode
from core.ports import Clock, Grant, Rate
from core.ratelimit import MAX_LOCK_DOUBLINGS

# ARGV[1] is "now" in ms, or "" for Redis's clock.
_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function int(x) return string.format('%d', x) end
"""

_HIT = (
    _NOW
    + """
-- KEYS: one per rate; ARGV[2]: cost; then burst and interval (ms) of each key's rate
local cost = tonumber(ARGV[2])
local granted = cost
local tats = {}
for i = 1, #KEYS do
  local burst, T = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  tats[i] = tat
  local avail = math.floor((now + burst * T - tat) / T)
  if avail < granted then granted = avail end
end
if granted < 0 then granted = 0 end
local retry = 0
for i = 1, #KEYS do
  local burst, T = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local tat = tats[i] + granted * T
  if granted > 0 then redis.call('SET', KEYS[i], int(tat), 'PX', int(tat - now)) end
  if granted < cost then
    local wait = tat + T - burst * T - now
    if wait > retry then retry = wait end
  end
end
return {granted, retry}
"""
)

_FAIL = (
    _NOW
    + """
-- KEYS: one hash each {tat, level, until}; ARGV[2..]: burst, interval, lock, max lock, cap
local burst, T = tonumber(ARGV[2]), tonumber(ARGV[3])
local lock_ms, max_lock, cap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local longest = 0
for i = 1, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'tat', 'level', 'until')
  local tat = tonumber(h[1]) or now
  local level = tonumber(h[2]) or 0
  local untl = tonumber(h[3]) or 0
  -- forgiven once the budget refilled and a whole window passed since the last lock ended
  if math.max(tat, untl + burst * T) <= now then level = 0 end
  if tat < now then tat = now end
  tat = tat + T
  if now + burst * T - tat < T then
    local lock = lock_ms * 2 ^ math.min(level, cap)
    if lock > max_lock then lock = max_lock end
    level = level + 1
    untl = now + lock
  end
  redis.call('HSET', KEYS[i], 'tat', int(tat), 'level', int(level), 'until', int(untl))
  redis.call('PEXPIRE', KEYS[i], int(math.max(tat, untl + burst * T) - now))
  if untl - now > longest then longest = untl - now end
end
return int(longest)
"""
)

_LOCKED = (
    _NOW
    + """
local longest = 0
for i = 1, #KEYS do
  local untl = tonumber(redis.call('HGET', KEYS[i], 'until')) or 0
  if untl - now > longest then longest = untl - now end
end
return int(longest)
"""
)

_ACQUIRE = (
    _NOW
    + """
-- KEYS[1]: a sorted set of members by lease expiry; ARGV[2..]: member, limit, lease (ms)
local member, limit, lease = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
if not redis.call('ZSCORE', KEYS[1], member) and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], int(now + lease), member)
redis.call('PEXPIRE', KEYS[1], int(lease))
return 1
"""
)


class RedisRateLimiter:
    """:class:`core.ports.RateLimiter` on one Redis. ``prefix`` starts every key (tests give
    each test its own); ``timeout_s`` bounds each call, after which it raises
    ``ChatError(UNAVAILABLE)`` (as does any Redis error); ``clock``: None for Redis's."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "jetchat:limits:",
        timeout_s: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._clock = clock
        self._hit = client.register_script(_HIT)
        self._fail = client.register_script(_FAIL)
        self._locked = client.register_script(_LOCKED)
        self._acquire = client.register_script(_ACQUIRE)

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.5, **kw: Any) -> RedisRateLimiter:
        client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        return cls(client, timeout_s=timeout_s, **kw)

    async def close(self) -> None:
        await self._redis.aclose()

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    def _now(self) -> str:
        return "" if self._clock is None else str(self._clock.now_ms())

    async def _call(self, awaitable: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await awaitable
        except (RedisError, OSError, TimeoutError) as exc:
            raise ChatError(
                ErrorCode.UNAVAILABLE, f"the rate limiter (Redis) did not answer: {exc}"
            ) from exc

    async def hit(self, rates: Sequence[tuple[str, Rate]], cost: int = 1) -> Grant:
        args: list[str | int] = [self._now(), cost]
        for _, rate in rates:
            args += [rate.burst, rate.interval_ms]
        keys = [self._prefix + key for key, _ in rates]
        granted, retry = await self._call(self._hit(keys=keys, args=args))
        return Grant(int(granted), int(retry))

    async def fail(self, keys: Sequence[str], rate: Rate, lock_ms: int, max_lock_ms: int) -> int:
        args: list[str | int] = [self._now(), rate.burst, rate.interval_ms, lock_ms]
        args += [max_lock_ms, MAX_LOCK_DOUBLINGS]
        found = await self._call(self._fail(keys=[self._prefix + k for k in keys], args=args))
        return int(found)

    async def locked(self, keys: Sequence[str]) -> int:
        found = await self._call(
            self._locked(keys=[self._prefix + k for k in keys], args=[self._now()])
        )
        return int(found)

    async def reset(self, key: str) -> None:
        await self._call(self._redis.delete(self._prefix + key))

    async def acquire(self, key: str, member: str, limit: int, lease_ms: int) -> bool:
        args: list[str | int] = [self._now(), member, limit, lease_ms]
        return bool(await self._call(self._acquire(keys=[self._prefix + key], args=args)))

    async def release(self, key: str, member: str) -> None:
        await self._call(self._redis.zrem(self._prefix + key, member))
