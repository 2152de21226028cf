"""WebSocket close codes the server sends, in one place (docs/protocol.md, "Close codes").

1000-2999 are RFC 6455's; 4000-4999 are ours. A client that sees a code it does not know
should treat it as 1011: reconnect with its cursor.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """Why the server closed a WebSocket, and what the client should do next."""

    NORMAL = 1000
    """Normal close (the client asked to close): nothing to do."""

    GOING_AWAY = 1001
    """The chat service is shutting down (``Chat.shutdown``): reconnect, possibly to another
    process, with the cursor."""

    ABNORMAL = 1006
    """Never sent on the wire (RFC 6455 reserves it): the connection was dropped without a
    closing handshake, as ``Transport.abort`` does. Only seen locally."""

    INVALID_PAYLOAD = 1007
    """A text frame was not valid UTF-8 (RFC 6455, 8.1): the handler closes at once, as the
    RFC asks; python-websockets' sans-I/O protocol does not check text payloads itself."""

    MESSAGE_TOO_BIG = 1009
    """A received frame was larger than ``JETCHAT_WS_MAX_SIZE``. Sent by python-websockets
    itself (its ``max_size``); listed here so that clients and tests can name it."""

    INTERNAL_ERROR = 1011
    """A task of the connection failed, or the client stopped answering keepalive pings:
    reconnect with the cursor."""

    SERVICE_RESTART = 1012
    """uvicorn is shutting this process down and drains every connection: reconnect (to any
    process) with the cursor."""

    REVOKED = 4001
    """The device was logged out or revoked, or its token expired (the reason says which;
    one code, since the client does the same for both): log in again."""

    SLOW_CONSUMER = 4008
    """The client did not read its frames for ``JETCHAT_SEND_TIMEOUT_S`` (10 s): reconnect
    with the cursor; nothing is lost."""
