"""Bearer tokens on HTTP requests and WebSocket upgrades."""

from __future__ import annotations

import urllib.parse
from typing import Any

from litestar.connection import ASGIConnection


def token_from(authorization: str, query_string: str) -> str | None:
    """``Authorization: Bearer <token>``, or ``?token=`` for browser WebSockets, which cannot set
    headers (prefer the header: query strings end up in access logs)."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    tokens = urllib.parse.parse_qs(query_string).get("token")
    return tokens[0] if tokens else None


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """:func:`token_from` an HTTP request."""
    # the raw ASGI headers: Litestar's Headers object (~1 KB) would live as long as the
    # request, which for a long poll is up to its timeout
    scope = connection.scope
    authorization = next(
        (raw.decode("latin-1") for name, raw in scope["headers"] if name == b"authorization"), ""
    )
    return token_from(authorization, scope["query_string"].decode("latin-1"))
