"""The in-process :class:`core.ports.RateLimiter`: the embedded default's, when no Redis is
configured (``JETCHAT_REDIS_URL`` empty). The embedded default is one process, so limits kept
in it are exact there; several processes each with their own would each allow the full rate,
which is why production sets ``JETCHAT_REDIS_URL`` (storage/redis_limits.py).

Pure state and arithmetic on an injected clock, no I/O: the same integer arithmetic as the
Redis scripts, so both pass one contract suite with the same numbers."""

from __future__ import annotations

from collections.abc import Sequence

from core.ports import Clock, Grant, Rate

MAX_LOCK_DOUBLINGS = 30
"""The lock doubles at most this many times (it is capped by ``max_lock_ms`` long before)."""
_SWEEP_EVERY = 4096
"""Operations between two sweeps of expired keys (each sweep looks at every key once)."""


def lock_for(level: int, lock_ms: int, max_lock_ms: int) -> int:
    """The ``level``-th lock (0: the first) of a growing lockout."""
    doublings: int = min(level, MAX_LOCK_DOUBLINGS)
    return min(lock_ms * (1 << doublings), max_lock_ms)


class _Failures:
    __slots__ = ("forget", "level", "tat", "until")

    def __init__(self, tat: int, level: int, until: int) -> None:
        self.tat, self.level, self.until = tat, level, until
        self.forget = tat  # when the key is forgiven: see InProcessRateLimiter.fail


class InProcessRateLimiter:
    """:class:`core.ports.RateLimiter` for this process alone. Never raises UNAVAILABLE."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._tats: dict[str, int] = {}  # GCRA: theoretical arrival time (ms) per key
        self._failures: dict[str, _Failures] = {}
        self._leases: dict[str, dict[str, int]] = {}  # key -> member -> expiry (ms)
        self._ops = 0

    async def hit(self, rates: Sequence[tuple[str, Rate]], cost: int = 1) -> Grant:
        now = self._tick()
        tats = [max(self._tats.get(key, now), now) for key, _ in rates]
        granted = cost
        for tat, (_, rate) in zip(tats, rates, strict=True):
            T = rate.interval_ms
            granted = min(granted, (now + rate.burst * T - tat) // T)
        granted = max(granted, 0)
        retry = 0
        for tat, (key, rate) in zip(tats, rates, strict=True):
            T = rate.interval_ms
            tat += granted * T
            if granted > 0:
                self._tats[key] = tat
            if granted < cost:
                retry = max(retry, tat + T - rate.burst * T - now)
        return Grant(granted, retry)

    async def fail(self, keys: Sequence[str], rate: Rate, lock_ms: int, max_lock_ms: int) -> int:
        now = self._tick()
        T, longest = rate.interval_ms, 0
        for key in keys:
            f = self._failures.get(key)
            # forgiven once the budget refilled and a whole window passed since the last lock
            if f is None or f.forget <= now:
                f = self._failures[key] = _Failures(now, 0, 0)
            f.tat = max(f.tat, now) + T
            if now + rate.burst * T - f.tat < T:  # the burst is used up: lock
                f.until = now + lock_for(f.level, lock_ms, max_lock_ms)
                f.level += 1
            f.forget = max(f.tat, f.until + rate.burst * T)
            longest = max(longest, f.until - now)
        return longest

    async def locked(self, keys: Sequence[str]) -> int:
        now = self._tick()
        found = [f.until - now for k in keys if (f := self._failures.get(k)) is not None]
        return max([0, *found])

    async def reset(self, key: str) -> None:
        self._failures.pop(key, None)

    async def acquire(self, key: str, member: str, limit: int, lease_ms: int) -> bool:
        now = self._tick()
        leases = self._leases.setdefault(key, {})
        for m in [m for m, until in leases.items() if until <= now]:
            del leases[m]
        if member not in leases and len(leases) >= limit:
            return False
        leases[member] = now + lease_ms
        return True

    async def release(self, key: str, member: str) -> None:
        leases = self._leases.get(key)
        if leases is not None:
            leases.pop(member, None)
            if not leases:
                del self._leases[key]

    def _tick(self) -> int:
        """Now; and every so often forget the keys that expired (bounded memory)."""
        now = self._clock.now_ms()
        self._ops += 1
        if self._ops % _SWEEP_EVERY == 0:
            self._tats = {k: t for k, t in self._tats.items() if t > now}
            self._failures = {k: f for k, f in self._failures.items() if f.forget > now}
            for key in list(self._leases):
                leases = {m: u for m, u in self._leases[key].items() if u > now}
                if leases:
                    self._leases[key] = leases
                else:
                    del self._leases[key]
        return now
