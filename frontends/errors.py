"""How a ChatError looks over HTTP: a status and ``{"code": ..., "message": ...}``."""

from __future__ import annotations

import msgspec

from core.errors import ChatError, ErrorCode

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.MALFORMED: 400,
    ErrorCode.UNKNOWN_TYPE: 400,
    ErrorCode.NOT_TEXT: 400,
    ErrorCode.INVALID_ARGUMENT: 422,
    ErrorCode.EMPTY_MESSAGE: 422,
    ErrorCode.MESSAGE_TOO_LONG: 413,
    ErrorCode.NOT_READY: 409,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.BAD_CREDENTIALS: 401,
    ErrorCode.FORBIDDEN_ORIGIN: 403,
    ErrorCode.UPGRADE_REQUIRED: 426,
    ErrorCode.USERNAME_TAKEN: 409,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.GROUP_FULL: 409,
    ErrorCode.UNKNOWN_RECIPIENT: 404,
    ErrorCode.RESYNC_NEEDED: 409,
    ErrorCode.SLOW_CONSUMER: 429,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class ErrorBody(msgspec.Struct, frozen=True):
    code: str
    message: str


def error_body(err: ChatError) -> tuple[int, bytes]:
    return HTTP_STATUS[err.code], msgspec.json.encode(ErrorBody(err.code.value, err.message))


def retry_after_header(err: ChatError) -> dict[str, str] | None:
    """HTTP's ``Retry-After`` (whole seconds, rounded up) for an error that says when."""
    if err.retry_after_ms is None:
        return None
    return {"retry-after": str(max(1, -(-err.retry_after_ms // 1000)))}
