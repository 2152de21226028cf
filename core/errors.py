"""Error codes shared by every frontend.

Every failure a client can see is a :class:`ChatError` with a stable ``code`` (documented in
docs/protocol.md) and a human readable ``message``. Frontends map codes to HTTP statuses and
WebSocket frames; nothing else leaks out.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # request shape
    MALFORMED = "malformed"  # not JSON, or JSON that does not fit the frame's schema
    UNKNOWN_TYPE = "unknown_type"  # a frame "type" the server does not know
    NOT_TEXT = "not_text"  # a binary WebSocket frame; the protocol is JSON text
    EMPTY_MESSAGE = "empty_message"
    MESSAGE_TOO_LONG = "message_too_long"
    INVALID_ARGUMENT = "invalid_argument"
    NOT_READY = "not_ready"  # a frame that needs "hello" first
    # accounts and auth
    UNAUTHORIZED = "unauthorized"  # no token, unknown, expired or revoked token
    BAD_CREDENTIALS = "bad_credentials"
    USERNAME_TAKEN = "username_taken"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"  # not a member of the conversation, or not an admin of the group
    GROUP_FULL = "group_full"  # adding past the group size limit
    FORBIDDEN_ORIGIN = "forbidden_origin"
    # a plain GET to the WebSocket's path: a proxy dropped the Upgrade header (long polling works)
    UPGRADE_REQUIRED = "upgrade_required"
    # delivery
    UNKNOWN_RECIPIENT = "unknown_recipient"
    RESYNC_NEEDED = "resync_needed"
    SLOW_CONSUMER = "slow_consumer"
    RATE_LIMITED = "rate_limited"  # beyond a rate limit; retry_after_ms says when to retry
    UNAVAILABLE = "unavailable"  # a backend (NATS, Postgres) did not answer in time; retry
    INTERNAL = "internal"


class ChatError(Exception):
    """A failure with a documented code; safe to show to the client."""

    def __init__(self, code: ErrorCode, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
        """When retrying may succeed (``rate_limited``): HTTP's Retry-After, a frame's
        ``retry_after_ms``."""

    def __repr__(self) -> str:
        return f"ChatError({self.code.value!r}, {self.message!r})"
