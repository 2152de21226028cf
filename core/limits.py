"""Abuse limits: which rate applies to what, and what happens when the limiter's backend
(Redis) is down. The arithmetic is the :class:`core.ports.RateLimiter`'s; this module only
names the keys and picks, per limit, whether an unavailable limiter refuses (log-in, sign-up:
never allow unlimited password guessing or account creation) or lets the request pass
(sends, typing, connections, polls: chatting goes on while Redis is away, logged once per
minute per limit, not per message). docs/protocol.md lists them for clients.

A refused request is ``ChatError(RATE_LIMITED)`` carrying ``retry_after_ms``, counted in
``jetchat_rate_limited_total{limit=...}``; typing beyond its rate is dropped silently (and
counted), as it always was: an indicator is not worth an error frame."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

import msgspec

from core import metrics
from core.errors import ChatError, ErrorCode
from core.ports import Clock, Grant, Rate, RateLimiter

log = logging.getLogger(__name__)
T = TypeVar("T")

_CONNECTION_RETRY_MS = 5_000
"""Retry-After of a refused connection: no time frees one, a close does; a hint so that
clients do not reconnect in a tight loop."""
_WARN_EVERY_MS = 60_000
"""An unavailable limiter that lets requests pass is logged at most this often per limit."""


class RateLimitSettings(msgspec.Struct, frozen=True):
    """The limits' defaults (jetchat/settings.py makes each a ``JETCHAT_*`` setting).

    Each rate is GCRA's: a burst of N at once, then N per window on average."""

    login_failures_per_account: int = 10
    """Wrong passwords for one account within ``login_failure_window_s`` before it is locked:
    10 in 15 minutes stops guessing while a person who mistypes keeps room (OWASP's advice is
    a lockout of this order, growing, rather than a permanent one)."""
    login_failures_per_address: int = 100
    """The same from one client address, over any accounts: higher, since many users can
    share one address (a NAT, an office)."""
    login_failure_window_s: int = 900
    login_lockout_s: int = 60
    """The first lockout; each next one while failures go on is twice as long."""
    login_lockout_max_s: int = 3600
    """The longest lockout: a locked account (an attacker can lock someone else's) is never
    locked for more than an hour at a time."""
    signups_per_address: int = 10
    """Accounts created from one address within ``signup_window_s``."""
    signup_window_s: int = 3600
    sends_per_user: int = 200
    """Messages one user may send within ``send_window_s``, all devices together: 200 in
    10 s is far above anyone typing, and what a client resending its queue after a long
    absence needs; a spam script is held to 20 a second."""
    sends_per_device: int = 100
    send_window_s: int = 10
    typing_per_s: float = 1.0
    """Typing events a device may send per second on average (beyond: dropped)."""
    typing_burst: int = 5
    connections_per_user: int = 20
    """Open WebSockets of one user at once, all devices and processes together."""
    connection_lease_s: int = 300
    """A connection counts this long unless its ``ping`` frames (every 30 s) renew it: the
    safety net when a process dies without closing its sockets' counts."""
    polls_per_device: int = 120
    """Long polls of one device within ``poll_window_s``: a poll waits up to 25 s when idle,
    and answers at once while messages flow, so 120 a minute is a busy client, not an idle
    one."""
    poll_window_s: int = 60


def _rate(count: int, window_s: float) -> Rate:
    return Rate(burst=count, interval_ms=max(1, round(window_s * 1000 / count)))


class RateLimits:
    """Every limit of the product, on one :class:`core.ports.RateLimiter`."""

    def __init__(self, limiter: RateLimiter, settings: RateLimitSettings, clock: Clock) -> None:
        s = self.settings = settings
        self._limiter = limiter
        self._clock = clock
        self._warned: dict[str, int] = {}
        self._login_account = _rate(s.login_failures_per_account, s.login_failure_window_s)
        self._login_address = _rate(s.login_failures_per_address, s.login_failure_window_s)
        self._signup = _rate(s.signups_per_address, s.signup_window_s)
        self._send_user = _rate(s.sends_per_user, s.send_window_s)
        self._send_device = _rate(s.sends_per_device, s.send_window_s)
        self._typing = _rate(s.typing_burst, s.typing_burst / s.typing_per_s)
        self._poll = _rate(s.polls_per_device, s.poll_window_s)

    # --- log-in and sign-up: refused while the limiter is down ------------------------------

    async def check_login(self, account: str, address: str) -> None:
        """Before checking a password: refused while the account or the address is locked
        out, or while the limiter does not answer (``unavailable``)."""
        retry = await self._closed(
            "login", self._limiter.locked([f"login:a:{account}", f"login:ip:{address}"])
        )
        if retry > 0:
            self._refuse("login", retry, "too many failed log-ins; wait before trying again")

    async def login_failed(self, account: str, address: str) -> None:
        """A wrong password: counted against the account and the address (a lockout starts
        when either used its budget; the next attempt is refused)."""
        limiter, s = self._limiter, self.settings
        lock_ms, max_ms = s.login_lockout_s * 1000, s.login_lockout_max_s * 1000
        account_key, address_key = f"login:a:{account}", f"login:ip:{address}"
        await self._closed(
            "login", limiter.fail([account_key], self._login_account, lock_ms, max_ms)
        )
        await self._closed(
            "login", limiter.fail([address_key], self._login_address, lock_ms, max_ms)
        )

    async def login_succeeded(self, account: str) -> None:
        """The account's failures are forgotten (not the address's: one good account must
        not reset the budget an address has for guessing others)."""
        await self._open("login", self._limiter.reset(f"login:a:{account}"), None)

    async def sign_up(self, address: str) -> None:
        key = f"signup:{address}"
        grant = await self._closed("signup", self._limiter.hit([(key, self._signup)]))
        if not grant.granted:
            self._refuse("signup", grant.retry_after_ms, "too many sign-ups from this address")

    # --- chatting: lets requests pass while the limiter is down -----------------------------

    async def sends(self, user: str, device: str, count: int) -> Grant:
        """How many of ``count`` sends (in order) may go; the rest are refused."""
        grant = await self._open(
            "send",
            self._limiter.hit(
                [(f"send:u:{user}", self._send_user), (f"send:d:{device}", self._send_device)],
                count,
            ),
            Grant(count, 0),
        )
        if grant.granted < count:
            metrics.RATE_LIMITED.labels("send").inc(count - grant.granted)
        return grant

    @staticmethod
    def refused_send(retry_after_ms: int) -> ChatError:
        return rate_limited(retry_after_ms, "sending too fast; slow down")

    async def typing(self, device: str) -> bool:
        """Whether a typing event of the device goes out (beyond its rate: dropped)."""
        grant = await self._open(
            "typing", self._limiter.hit([(f"typing:{device}", self._typing)]), Grant(1, 0)
        )
        if not grant.granted:
            metrics.RATE_LIMITED.labels("typing").inc()
            metrics.EVENTS_DROPPED.labels("typing_rate").inc()
        return grant.granted > 0

    async def connect(self, user: str, connection: str) -> None:
        """Count a new WebSocket of the user (refused beyond the limit)."""
        s = self.settings
        ok = await self._open(
            "connection",
            self._limiter.acquire(
                f"conn:{user}", connection, s.connections_per_user, s.connection_lease_s * 1000
            ),
            True,
        )
        if not ok:
            self._refuse(
                "connection",
                _CONNECTION_RETRY_MS,
                f"too many open connections (at most {s.connections_per_user} per user); close one",
            )

    async def renew(self, user: str, connection: str) -> None:
        """The connection is alive (its ``ping``): its count's lease starts again."""
        s = self.settings
        await self._open(
            "connection",
            self._limiter.acquire(f"conn:{user}", connection, 2**31, s.connection_lease_s * 1000),
            True,
        )

    async def disconnect(self, user: str, connection: str) -> None:
        await self._open("connection", self._limiter.release(f"conn:{user}", connection), None)

    async def poll(self, device: str) -> None:
        grant = await self._open(
            "poll", self._limiter.hit([(f"poll:{device}", self._poll)]), Grant(1, 0)
        )
        if not grant.granted:
            self._refuse("poll", grant.retry_after_ms, "polling too fast")

    # --- how each kind fails ---------------------------------------------------------------

    def _refuse(self, limit: str, retry_after_ms: int, message: str) -> None:
        metrics.RATE_LIMITED.labels(limit).inc()
        raise rate_limited(retry_after_ms, message)

    async def _closed(self, limit: str, call: Awaitable[T]) -> T:
        """Fail closed: an unavailable limiter refuses the request (``unavailable``, 503)."""
        try:
            return await call
        except ChatError as err:
            if err.code is not ErrorCode.UNAVAILABLE:
                raise
            metrics.RATE_LIMITER_DOWN.labels(limit).inc()
            self._warn(limit, "refused")
            raise ChatError(
                ErrorCode.UNAVAILABLE, "the rate limiter does not answer; retry later"
            ) from err

    async def _open(self, limit: str, call: Awaitable[T], passed: T) -> T:
        """Fail open: an unavailable limiter lets the request pass (``passed``)."""
        try:
            return await call
        except ChatError as err:
            if err.code is not ErrorCode.UNAVAILABLE:
                raise
            metrics.RATE_LIMITER_DOWN.labels(limit).inc()
            self._warn(limit, "let through unlimited")
            return passed

    def _warn(self, limit: str, outcome: str) -> None:
        now = self._clock.now_ms()
        if now - self._warned.get(limit, -_WARN_EVERY_MS) >= _WARN_EVERY_MS:
            self._warned[limit] = now
            log.warning(
                "rate limiter unavailable: %s requests %s (logged once a minute)", limit, outcome
            )


def rate_limited(retry_after_ms: int, message: str) -> ChatError:
    return ChatError(ErrorCode.RATE_LIMITED, message, retry_after_ms=max(1, retry_after_ms))
