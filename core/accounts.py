"""Sign up, log in, devices, tokens, profiles."""

from __future__ import annotations

import asyncio

import argon2
import msgspec

from core.errors import ChatError, ErrorCode
from core.identifiers import (
    DEVICE_ID_RE,
    MAX_DEVICE_NAME_CHARS,
    MAX_DISPLAY_NAME_CHARS,
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
    USER_ID_RE,
    clean_name,
)
from core.ids import new_device_id, new_token, token_hash
from core.limits import RateLimits
from core.model import Device, User
from core.ports import AccountStore, Clock, RevocationBus


class Profile(msgspec.Struct, frozen=True):
    id: str
    display_name: str
    created_at: int


class Login(msgspec.Struct, frozen=True):
    token: str
    user_id: str
    device_id: str
    expires_at: int


class DeviceInfo(msgspec.Struct, frozen=True):
    id: str
    name: str
    created_at: int
    expires_at: int


class Accounts:
    """Passwords are hashed with argon2id (argon2-cffi's RFC 9106 low-memory profile), off the
    event loop. Tokens are random, one per device, stored hashed, and checked on every request
    against the store, so a revocation takes effect at once on every process."""

    def __init__(
        self,
        store: AccountStore,
        clock: Clock,
        token_ttl_s: int,
        revocations: RevocationBus,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self._store = store
        self._limits = rate_limits  # None: not limited (tests of other rules)
        self._revocations = revocations
        self._clock = clock
        self._token_ttl_ms = token_ttl_s * 1000
        self._hasher = argon2.PasswordHasher()
        # Verifying against this when the user does not exist keeps "no such user" and "wrong
        # password" equally slow, so response times do not reveal which handles exist.
        self._dummy_hash = self._hasher.hash("not a real password")

    async def sign_up(
        self, user_id: str, password: str, display_name: str = "", address: str = ""
    ) -> Profile:
        """``address``: the client's, for the sign-ups-per-address limit."""
        if not USER_ID_RE.fullmatch(user_id):
            raise ChatError(
                ErrorCode.INVALID_ARGUMENT,
                "username must be 3 to 32 characters of a-z, 0-9 and _",
            )
        _check_password(password)
        display_name = clean_name(
            display_name, "display_name", MAX_DISPLAY_NAME_CHARS, required=False
        )
        if self._limits is not None:  # only well-formed sign-ups count
            await self._limits.sign_up(address)
        password_hash = await asyncio.to_thread(self._hasher.hash, password)
        user = User(user_id, display_name or user_id, password_hash, self._clock.now_ms())
        if not await self._store.create_user(user):
            raise ChatError(ErrorCode.USERNAME_TAKEN, f"username {user_id!r} is taken")
        return Profile(user.id, user.display_name, user.created_at)

    async def log_in(
        self, user_id: str, password: str, device_name: str = "", address: str = ""
    ) -> Login:
        """``address``: the client's. Failures lock the account and the address out for a
        while (core/limits.py), checked before the password is; a success forgets the
        account's failures."""
        if len(password) > MAX_PASSWORD_CHARS:
            raise ChatError(ErrorCode.INVALID_ARGUMENT, "password is too long")
        device_name = clean_name(device_name, "device_name", MAX_DEVICE_NAME_CHARS, required=False)
        limits = self._limits
        if limits is not None:
            await limits.check_login(user_id, address)
        user = await self._store.get_user(user_id) if USER_ID_RE.fullmatch(user_id) else None
        ok = await asyncio.to_thread(
            self._verify, user.password_hash if user else self._dummy_hash, password
        )
        if user is None or not ok:
            if limits is not None:
                await limits.login_failed(user_id, address)
            raise ChatError(ErrorCode.BAD_CREDENTIALS, "wrong username or password")
        if limits is not None:
            await limits.login_succeeded(user.id)
        token = new_token()
        now = self._clock.now_ms()
        device = Device(
            id=new_device_id(),
            user_id=user.id,
            name=device_name or "device",
            token_hash=token_hash(token),
            created_at=now,
            expires_at=now + self._token_ttl_ms,
        )
        await self._store.add_device(device)
        return Login(token, user.id, device.id, device.expires_at)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except argon2.exceptions.VerificationError:
            return False

    async def authenticate(self, token: str | None) -> Device:
        """The live device holding ``token``; ChatError(UNAUTHORIZED) otherwise."""
        if not token:
            raise ChatError(ErrorCode.UNAUTHORIZED, "missing bearer token")
        device = await self._store.device_by_token_hash(token_hash(token))
        if device is None:
            raise ChatError(ErrorCode.UNAUTHORIZED, "unknown token")
        if device.revoked_at is not None:
            raise ChatError(ErrorCode.UNAUTHORIZED, "token revoked (device logged out)")
        if device.expires_at <= self._clock.now_ms():
            raise ChatError(ErrorCode.UNAUTHORIZED, "token expired; log in again")
        return device

    async def devices(self, user_id: str) -> list[DeviceInfo]:
        return [
            DeviceInfo(d.id, d.name, d.created_at, d.expires_at)
            for d in await self._store.list_devices(user_id)
        ]

    async def revoke(self, user_id: str, device_id: str) -> None:
        if not DEVICE_ID_RE.fullmatch(device_id) or not await self._store.revoke_device(
            user_id, device_id, self._clock.now_ms()
        ):
            raise ChatError(ErrorCode.NOT_FOUND, f"no device {device_id!r}")
        await self._revocations.publish(device_id)

    async def profile(self, user_id: str) -> Profile:
        user = await self._store.get_user(user_id) if USER_ID_RE.fullmatch(user_id) else None
        if user is None:
            raise ChatError(ErrorCode.NOT_FOUND, f"no user {user_id!r}")
        return Profile(user.id, user.display_name, user.created_at)

    async def exists(self, user_id: str) -> bool:
        return USER_ID_RE.fullmatch(user_id) is not None and (
            await self._store.get_user(user_id) is not None
        )


def _check_password(password: str) -> None:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise ChatError(
            ErrorCode.INVALID_ARGUMENT,
            f"password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters",
        )
