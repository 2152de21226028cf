"""Bearer tokens on HTTP requests and WebSocket upgrades."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """``Authorization: Bearer <token>``, or ``?token=`` for browser WebSockets, which cannot set
    headers (prefer the header: query strings end up in access logs)."""
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return connection.query_params.get("token") or None
