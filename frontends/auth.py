"""Bearer tokens on HTTP requests and WebSocket upgrades."""

from __future__ import annotations

import urllib.parse
from typing import Any

from litestar.connection import ASGIConnection

QUERY_TOKEN_PATHS = frozenset({"/v1/ws", "/v1/poll"})
"""Where ``?token=`` is taken: a browser cannot set headers on a WebSocket upgrade, and a
client falling back from it to long polling keeps the same form. Anywhere else it is ignored
(the request is then answered 401 without a header): tokens in URLs end up in proxy logs and
browser history, so only where a client may have no other way (issue 13, finding k)."""


def token_from(authorization: str, query_string: str, path: str) -> str | None:
    """``Authorization: Bearer <token>``, or ``?token=`` on the paths of
    :data:`QUERY_TOKEN_PATHS` (prefer the header: query strings end up in access logs)."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if path not in QUERY_TOKEN_PATHS:
        return None
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
    return token_from(authorization, scope["query_string"].decode("latin-1"), scope["path"])
