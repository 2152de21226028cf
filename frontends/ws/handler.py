"""The WebSocket frontend: ``GET /v1/ws``, one JSON frame per text message (docs/protocol.md).

uvicorn parses the HTTP request and, for an upgrade, hands the socket to the protocol class of
its ``ws`` setting: :func:`protocol_class` makes ours. It checks the path, the Origin and the
token (refusing with 401/403/404 and a JSON body), then moves bytes between the socket,
python-websockets' sans-I/O ``ServerProtocol`` (handshake, framing, UTF-8, size limits, close
handshake) and :class:`core.session.DeviceSession`. A thin adapter: every decision about
frames is the core's.

Why not an ASGI route: an idle WebSocket served through ASGI costs what the ASGI server keeps
for it (uvicorn's websockets-sansio implementation: an asyncio.Queue, events, the handshake's
request and response, the scope) and the task and coroutine stack of the app call, which lives
as long as the socket. Measured with a trivial ASGI app (bench/idle.py's load, 5,000 idle
sockets): 20 KB per socket before the app does anything, against a 10 KB budget for everything
(docs/benchmarks.md). This protocol holds the websockets state machine, its own slots and, only
while frames arrive or a handshake runs, a task. Sending also skips the ASGI layers (Litestar
wrapped every ``send`` in its exception middleware).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from typing import Any, ClassVar, cast

from litestar.datastructures import State
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol

from core.close import CloseCode
from core.errors import ChatError, ErrorCode
from core.session import DeviceSession
from frontends.auth import token_from
from frontends.context import frontend_context
from frontends.errors import error_body, retry_after_header

log = logging.getLogger(__name__)

PATH = "/v1/ws"
CLOSE_TIMEOUT_S = 10.0
"""After our close frame, how long the client has to answer before the socket is dropped."""
_MAX_QUEUED_FRAMES = 16
"""Received frames waiting for the core before the socket stops being read (the core itself
waits when a device has too many sends in flight)."""


class _Server:
    """What every socket of one server shares (one object, not copies per socket)."""

    def __init__(self, state: State, config: Any, server_state: Any) -> None:
        self.state = state
        self.max_size: int | None = config.ws_max_size
        self.ping_interval: float | None = config.ws_ping_interval
        self.ping_timeout: float | None = config.ws_ping_timeout
        self.deflate: bool = config.ws_per_message_deflate
        # uvicorn's, so that a graceful shutdown waits for our sockets and their tasks
        self.connections: set[Any] = server_state.connections
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self.open: set[WebSocketProtocol] = set()  # past the handshake: kept alive by pings
        self._opened = asyncio.Event()  # set when a socket opens, for the keepalive
        if self.ping_interval:
            # Made at the first upgrade: a process that serves no WebSocket has no keepalive.
            # One task for the process, under the supervisor (a bug in it used to stop the
            # pings until the next socket opened, with one log line; now it is restarted
            # and shows in the worker metrics and readiness).
            frontend_context(state).supervisor.start(
                "ws-keepalive", self._keepalive_loop, forever=True
            )

    def opened(self, sock: WebSocketProtocol) -> None:
        self.open.add(sock)
        self._opened.set()

    async def _keepalive_loop(self) -> None:
        """One task pings every open socket about every ``ping_interval`` and closes those
        that did not answer within ``ping_timeout``, looking four times per interval (or
        timeout), so both are kept to within a quarter. A timer per socket, as uvicorn has,
        costs about 500 bytes each. With no socket open it waits."""
        interval = self.ping_interval
        assert interval
        timeout = self.ping_timeout
        tick = min(interval, timeout or interval) / 4
        loop = asyncio.get_running_loop()
        while True:
            if not self.open:
                self._opened.clear()
                await self._opened.wait()
            await asyncio.sleep(tick)
            now = loop.time()
            for i, sock in enumerate(list(self.open)):
                sock.keepalive(now, interval, timeout)
                if i % 500 == 499:
                    await asyncio.sleep(0)  # 10,000 pings are not one stall

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        """A task of one socket (its handshake, frame reader, or end). Not supervised: it
        belongs to the socket and ends with it, restarting it would make no sense; its errors
        are handled where they happen (refusal, close 1011), and anything left is logged
        here. uvicorn's graceful shutdown waits for these tasks."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("WebSocket task failed", exc_info=exc)


# phases of a socket: checking the upgrade; accepted, the core's connection opening (frames
# can be sent, received ones wait); open; gone
_HANDSHAKE, _OPENING, _OPEN, _LOST = 0, 1, 2, 3


class WebSocketProtocol(asyncio.Protocol):
    """One client socket after uvicorn's upgrade; also the core's ``Transport`` for it."""

    _state: ClassVar[State]  # set by protocol_class()
    _server: ClassVar[_Server | None] = None
    kind = "ws"  # core.ports.Transport's; a class attribute, nothing per socket

    __slots__ = (
        "_conn",
        "_fragments",
        "_fragments_text",
        "_incoming",
        "_phase",
        "_ping_at",
        "_ping_payload",
        "_read_paused",
        "_task",
        "_timer",
        "_transport",
        "_write_paused",
        "_write_waiter",
        "_ws",
    )

    def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None) -> None:
        # uvicorn's signature for a ws protocol class
        cls = type(self)
        if cls._server is None:
            cls._server = _Server(cls._state, config, server_state)
        server = cls._server
        extensions = []
        if server.deflate:
            extensions = [
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=12,
                    client_max_window_bits=12,
                    compress_settings={"memLevel": 5},
                )
            ]
        self._ws = ServerProtocol(extensions=extensions, max_size=server.max_size)
        self._transport: asyncio.Transport | None = None
        self._conn: DeviceSession | None = None
        self._phase = _HANDSHAKE
        self._task: asyncio.Task[None] | None = None  # the handshake, then the frame reader
        self._incoming: collections.deque[str | bytes] | None = None
        self._fragments: list[bytes] | None = None
        self._fragments_text = False
        self._read_paused = False
        self._write_paused = False
        self._write_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # the closing deadline
        self._ping_payload: bytes | None = None  # of the ping waiting for its pong
        self._ping_at = 0.0  # when the last ping was sent (or the socket opened)

    @property
    def _srv(self) -> _Server:
        server = type(self)._server
        assert server is not None
        return server

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        self._srv.connections.add(self)

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, Request):
                if self._task is None:
                    self._task = self._srv.spawn(self._handshake(event))
            elif isinstance(event, Frame):
                self._on_frame(event)
                if self._ws.state is not WsState.OPEN:
                    break  # failed (invalid UTF-8) or closing: the frames after it do not count
        self._flush()

    def eof_received(self) -> bool | None:
        self._ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        server = self._srv
        server.connections.discard(self)
        server.open.discard(self)
        self._phase = _LOST
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake_writers()
        if self._task is not None or self._conn is not None:
            _ = server.spawn(self._finish(self._task))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writers()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: clients reconnect, to another process if need be."""
        if self._conn is not None and self._phase in (_OPENING, _OPEN):
            self._conn.close_soon(CloseCode.SERVICE_RESTART, "server restarting")
        elif self._transport is not None:
            self._transport.close()

    # --- core.ports.Transport --------------------------------------------------------------

    async def send(self, frame: str) -> None:
        await self._writable()
        if self._phase != _LOST and self._ws.state is WsState.OPEN:
            self._ws.send_text(frame.encode())
            self._flush()
        # else: the socket is closing or gone; the client catches up from its cursor

    async def close(self, code: CloseCode, reason: str) -> None:
        """Queue the close frame at once, behind whatever the socket has not written yet
        (waiting for room first, as :meth:`send` does, would never queue it for a client that
        stopped reading), then wait until all of it, close frame included, is in the kernel's
        hands. A client that does not read keeps this waiting: the core gives up after
        ``close_timeout_s`` and aborts (docs/protocol.md, slow consumers). Raises
        ConnectionError if the socket went before the close frame was written."""
        if self._phase == _LOST or self._ws.state is not WsState.OPEN:
            return
        self._ws.send_close(code, reason)
        self._flush()
        self._srv.open.discard(self)  # no more pings
        transport = self._transport
        assert transport is not None
        if transport.get_write_buffer_size():
            # pause until the buffer is empty (asyncio pauses at once if it is not)
            transport.set_write_buffer_limits(high=0, low=0)
            await self._writable()
            if self._phase == _LOST and self._write_paused:
                raise ConnectionError("the socket went before the close frame was written")
        if self._timer is None and self._phase != _LOST:
            # the close frame is out: the client has this long to answer it
            self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self.abort)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- internals -------------------------------------------------------------------------

    def _flush(self) -> None:
        transport = self._transport
        assert transport is not None
        for data in self._ws.data_to_send():
            if data:
                transport.write(data)
            else:  # the protocol is done (closing handshake over, or a refusal sent)
                transport.close()

    async def _writable(self) -> None:
        while self._write_paused and self._phase != _LOST:
            if self._write_waiter is None:
                self._write_waiter = asyncio.get_running_loop().create_future()
            # shielded: one waiter cancelled (the core's send timeout) must not wake the others
            await asyncio.shield(self._write_waiter)

    def _wake_writers(self) -> None:
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _handshake(self, request: Request) -> None:
        ws = self._ws
        state = self._srv.state
        try:
            path, _, query = request.path.partition("?")
            if path != PATH:
                raise ChatError(ErrorCode.NOT_FOUND, f"no WebSocket endpoint here; use {PATH}")
            context = frontend_context(state)
            if not context.origin_allowed(request.headers.get("Origin")):
                raise ChatError(ErrorCode.FORBIDDEN_ORIGIN, "origin not allowed")
            chat = context.chat
            token = token_from(request.headers.get("Authorization", ""), query, path)
            device = await chat.accounts.authenticate(token)
            conn = DeviceSession(chat, device, self)
            await conn.admit()  # connections per user: refused with 429 beyond the limit
            self._conn = conn
        except ChatError as err:
            self._refuse(err)
            self._task = None
            return
        except Exception:
            log.exception("WebSocket upgrade failed")
            self._refuse(ChatError(ErrorCode.UNAVAILABLE, "could not check the token; retry"))
            self._task = None
            return
        if self._phase == _LOST:
            self._task = None
            await conn.aclose()  # no longer counted
            return
        response = ws.accept(request)
        # websockets' parser keeps the request for the socket's life (a local of its
        # generator); its headers (~3 KB) are not needed any more
        request.headers.clear()
        ws.send_response(response)
        self._flush()
        if response.status_code != 101:  # not a valid WebSocket handshake: refused by ws
            self._task = None
            self._conn = None
            await conn.aclose()
            return
        self._phase = _OPENING
        try:
            await conn.open()
        except Exception:
            log.exception("opening a connection failed")
            conn.close_soon(CloseCode.INTERNAL_ERROR, "internal error")
            self._task = None
            return
        self._phase = _OPEN
        self._ping_at = asyncio.get_running_loop().time()
        self._srv.opened(self)
        self._task = None
        if self._incoming:
            self._task = self._srv.spawn(self._read_loop())

    def _refuse(self, err: ChatError) -> None:
        status, body = error_body(err)
        # ends with a newline, as the app's JSON answers do (frontends/http/answers.py)
        response = self._ws.reject(status, body.decode() + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        for name, value in (retry_after_header(err) or {}).items():
            response.headers[name] = value
        self._ws.send_response(response)
        self._flush()

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._fragments = [bytes(frame.data)]
                self._fragments_text = opcode is Opcode.TEXT
                return
            data = bytes(frame.data)
            self._received(self._text(data) if opcode is Opcode.TEXT else data)
        elif opcode is Opcode.CONT:
            fragments = self._fragments
            if fragments is None:
                return  # websockets refuses a continuation without a start
            fragments.append(bytes(frame.data))
            if frame.fin:
                self._fragments = None
                data = b"".join(fragments)
                self._received(self._text(data) if self._fragments_text else data)
        elif opcode is Opcode.PONG:
            if self._ping_payload is not None and bytes(frame.data) == self._ping_payload:
                self._ping_payload = None
        # PING: websockets queued the pong; CLOSE: it queued the answer and the end of stream

    def _text(self, data: bytes) -> str | None:
        """A text message's payload, or None after failing the connection with 1007 when it
        is not UTF-8 (RFC 6455 8.1). python-websockets' sans-I/O protocol leaves text payloads
        to its callers (only its asyncio and sync layers decode them), so this is the check: a
        UnicodeDecodeError escaping from data_received used to drop the TCP connection with
        no close frame at all."""
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            self._ws.fail(
                CloseCode.INVALID_PAYLOAD, f"invalid UTF-8 in a text frame at byte {exc.start}"
            )
            return None

    def _received(self, message: str | bytes | None) -> None:
        if message is None:
            return
        if self._incoming is None:
            self._incoming = collections.deque()
        self._incoming.append(message)
        if len(self._incoming) >= _MAX_QUEUED_FRAMES and not self._read_paused:
            self._read_paused = True
            assert self._transport is not None
            self._transport.pause_reading()
        if self._phase == _OPEN and self._task is None:
            self._task = self._srv.spawn(self._read_loop())

    async def _read_loop(self) -> None:
        """Hand queued frames to the core, in order, until none is left."""
        conn = self._conn
        assert conn is not None
        try:
            while incoming := self._incoming:
                message = incoming.popleft()
                if not incoming:
                    self._incoming = None
                    if self._read_paused and self._phase == _OPEN:
                        self._read_paused = False
                        assert self._transport is not None
                        self._transport.resume_reading()
                await conn.receive(message)
        except Exception:
            log.exception("handling a frame failed")
            conn.close_soon(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._task = None

    async def _finish(self, task: asyncio.Task[None] | None) -> None:
        """The socket is gone: stop the handshake or the reader, then the connection."""
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._conn is not None:
            await self._conn.aclose()

    def keepalive(self, now: float, interval: float, timeout: float | None) -> None:
        """Called by the server's keepalive task: ping when due, close if a ping timed out."""
        if self._ping_payload is not None and timeout:
            if now - self._ping_at >= timeout:
                self._ping_payload = None
                if self._ws.state is WsState.OPEN:
                    self._ws.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                    self._flush()
                if self._transport is not None:
                    self._transport.close()
        elif now - self._ping_at >= interval and self._ws.state is WsState.OPEN:
            self._ping_payload = os.urandom(4)
            self._ping_at = now
            self._ws.send_ping(self._ping_payload)
            self._flush()


def protocol_class(state: State) -> type[WebSocketProtocol]:
    """The protocol class to give uvicorn (``ws=``) for an app whose lifespan puts ``chat``
    and ``ws_settings`` into ``state``."""
    return type("JetchatWebSocket", (WebSocketProtocol,), {"__slots__": (), "_state": state})
