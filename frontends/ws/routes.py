"""A plain GET on the WebSocket's path: the upgrade did not arrive.

uvicorn hands WebSocket upgrades to :mod:`frontends.ws.handler` and never to the app; a request
to ``/v1/ws`` that reaches the app had its ``Upgrade`` header removed on the way (a proxy that
does not pass WebSockets, such as squid on plain HTTP). Rather than a 404, which says the path
is wrong, it gets 426 and the way out: long polling.
"""

from __future__ import annotations

from litestar import Response, get

from core.errors import ChatError, ErrorCode
from frontends.errors import error_body
from frontends.ws.handler import PATH


@get(PATH, include_in_schema=False, sync_to_thread=False)
def upgrade_required() -> Response[bytes]:
    status, body = error_body(
        ChatError(
            ErrorCode.UPGRADE_REQUIRED,
            f"{PATH} is a WebSocket, and this request arrived without its Upgrade header (a "
            "proxy on the way may remove it); long polling (GET /v1/poll) works without it",
        )
    )
    # RFC 9110 15.5.22 (was RFC 7231 6.5.15): a 426 says which protocol to upgrade to
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={"upgrade": "websocket", "connection": "Upgrade"},
    )
