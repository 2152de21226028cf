"""Bearer tokens on HTTP requests and WebSocket upgrades."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """``Authorization: Bearer <token>``, or ``?token=`` for browser WebSockets, which cannot set
    headers (prefer the header: query strings end up in access logs)."""
    # the raw ASGI headers: Litestar's Headers object (~1 KB) would live as long as the
    # request, which for a long poll is up to its timeout
    for name, raw in connection.scope["headers"]:
        if name == b"authorization":
            scheme, _, value = raw.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
            break
    return connection.query_params.get("token") or None
