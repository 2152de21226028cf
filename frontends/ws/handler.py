"""The WebSocket frontend: ``GET /v1/ws``, one JSON frame per text message (docs/protocol.md).

A thin adapter: it checks the Origin and the token at the upgrade, then hands every frame to
:class:`core.connection.Connection`.
"""

from __future__ import annotations

import asyncio
import logging

from litestar import WebSocket, websocket
from litestar.datastructures import State
from litestar.types import (
    WebSocketCloseEvent,
    WebSocketResponseBodyEvent,
    WebSocketResponseStartEvent,
    WebSocketSendEvent,
)

from core.chat import Chat
from core.connection import Connection
from core.errors import ChatError, ErrorCode
from frontends.auth import bearer_token
from frontends.errors import error_body

log = logging.getLogger(__name__)


class WsTransport:
    """core.ports.Transport over a Litestar WebSocket (raw ASGI events: no re-encoding)."""

    def __init__(self, socket: WebSocket[object, object, State]) -> None:
        self._socket = socket
        self._handler = asyncio.current_task()
        self.aborted = False

    async def send(self, frame: str) -> None:
        event: WebSocketSendEvent = {"type": "websocket.send", "text": frame, "bytes": None}
        await self._socket.send(event)

    async def close(self, code: int, reason: str) -> None:
        event: WebSocketCloseEvent = {"type": "websocket.close", "code": code, "reason": reason}
        await self._socket.send(event)

    def abort(self) -> None:
        # Ending the handler makes the server drop the connection.
        self.aborted = True
        if self._handler is not None:
            self._handler.cancel()


class WsSettings:
    def __init__(self, allowed_origins: frozenset[str]) -> None:
        self.allowed_origins = allowed_origins

    def origin_allowed(self, origin: str | None) -> bool:
        """Non-browser clients send no Origin. Browsers always do: only listed ones pass."""
        return origin is None or "*" in self.allowed_origins or origin in self.allowed_origins


async def _reject(socket: WebSocket[object, object, State], err: ChatError) -> None:
    """Refuse the upgrade with a plain HTTP response (uvicorn supports the ASGI
    ``websocket.http.response`` extension), so clients see 401/403 and the reason."""
    status, body = error_body(err)
    await socket.receive()  # websocket.connect
    start: WebSocketResponseStartEvent = {
        "type": "websocket.http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json")],
    }
    await socket.send(start)
    end: WebSocketResponseBodyEvent = {
        "type": "websocket.http.response.body",
        "body": body,
        "more_body": False,
    }
    await socket.send(end)


@websocket("/v1/ws")
async def ws_handler(socket: WebSocket[object, object, State]) -> None:
    chat: Chat = socket.app.state.chat
    ws_settings: WsSettings = socket.app.state.ws_settings
    if not ws_settings.origin_allowed(socket.headers.get("origin")):
        await _reject(socket, ChatError(ErrorCode.FORBIDDEN_ORIGIN, "origin not allowed"))
        return
    try:
        device = await chat.accounts.authenticate(bearer_token(socket))
    except ChatError as err:
        await _reject(socket, err)
        return
    await socket.accept()
    transport = WsTransport(socket)
    conn = Connection(chat, device, transport)
    try:
        await conn.open()
        while True:
            event = await socket.receive()
            if event["type"] != "websocket.receive":
                break
            text = event.get("text")
            await conn.receive(text if text is not None else event.get("bytes") or b"")
    except asyncio.CancelledError:
        if not transport.aborted:
            raise
        # Our own abort: returning lets the server drop the connection.
    finally:
        await conn.aclose()
