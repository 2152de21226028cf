"""Centrifugo, the peer the benchmark measures jetchat against (scenarios 1-3).

Centrifugo runs here as a child process on 127.0.0.1 with its memory engine, and the load
generator talks to it over WebSocket with Centrifugo's JSON client protocol (protocol v2), the
way its own SDKs do: one JSON command per frame from us, replies and pushes from the server as
JSON documents separated by ``\\n``, several of them possibly in one frame.

    with CentrifugoServer(Path("/tmp/c")) as server:   # or .start() ... .stop()
        alice = CentrifugoClient(server.ws_url, token(server.secret, "alice"))
        await alice.connect()
        await alice.subscribe("personal.alice")

``ops/centrifugo fetch`` installs the binary to ``.tools/bin/centrifugo``.

    .venv/bin/python -m bench.centrifugo    # a self-check: 1,000 messages one by one, p50/p99
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection

from embedded import ChildServer, EmbeddedServerError, free_port

__all__ = [
    "CentrifugoClient",
    "CentrifugoError",
    "CentrifugoServer",
    "centrifugo_binary",
    "token",
]

ROOT = Path(__file__).resolve().parents[1]

START_TIMEOUT = 10.0
"""Seconds to wait for Centrifugo's /health to answer 200; it starts in well under one."""


REPLY_TIMEOUT = 30.0
"""Seconds a client waits for the reply to a command before giving up (the bench's deadline,
not Centrifugo's: the server itself answers or disconnects)."""

MAX_FRAME = 1 << 20
"""Largest WebSocket frame a client accepts, in bytes. Centrifugo's own inbound limit
(``websocket_message_size_limit``) is 64 KiB; a frame from it may batch many pushes."""


class CentrifugoError(RuntimeError):
    """A command answered with an error (``code`` is Centrifugo's, e.g. 103 permission denied)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"centrifugo error {code}: {message}")
        self.code = code


def centrifugo_binary() -> Path:
    """``.tools/bin/centrifugo`` of this repository (``ops/centrifugo fetch``), else PATH's."""
    local = ROOT / ".tools" / "bin" / "centrifugo"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("centrifugo")
    if found is None:
        raise EmbeddedServerError(
            "centrifugo not found in .tools/bin nor on PATH: ops/centrifugo fetch"
        )
    return Path(found)


def token(secret: str, user: str) -> str:
    """A connection JWT for ``user`` (claim ``sub``, no expiry), signed HS256 with ``secret``.

    Written out with hmac/base64/json rather than adding PyJWT: a bench helper that only ever
    signs one fixed header with a key it made itself, and verification is Centrifugo's job."""

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing_input = (
        b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps({"sub": user}).encode())
    )
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


# --- the server ---------------------------------------------------------------------------------


def _major_version(binary: Path) -> int:
    """5 or 6. ``centrifugo version`` cannot say: a ``go install`` build reports 0.0.0 (release
    builds stamp the version with ldflags). A v6-only flag can: v6 moved the listener under
    ``http_server`` and nested the whole configuration that way."""
    out = subprocess.run(
        [str(binary), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    return 6 if "http_server.port" in out.stdout + out.stderr else 5


class CentrifugoServer(ChildServer):
    """A Centrifugo child process on 127.0.0.1 (a free port), memory engine, its config and log
    in ``root``.

    The configuration is the cheapest real-time path Centrifugo has, the one comparable to a
    plain PUB/SUB hop: no history, no presence, no join/leave, no recovery on any channel, so a
    publication is fanned out from memory and forgotten. Clients authenticate with an HS256
    JWT (:func:`token` with :attr:`secret`), may subscribe to any channel without a subscription
    token (``allow_subscribe_for_client``) and publish into any channel, subscribed or not
    (``allow_publish_for_client``: a sender writes into the recipient's personal channel).
    Channel names must avoid ``:`` (namespace separator, none are defined), a leading ``$``
    (private channels) and ``#`` (user-limited channels): ``personal.alice``, ``group.42``.

    Everything else is Centrifugo's default, notably ping every 25 s with an 8 s pong timeout
    (clients answer, see :class:`CentrifugoClient`), 1 MiB send queue per connection, no
    WebSocket compression and no write-buffer pool (``websocket_use_write_buffer_pool`` would
    trade CPU for memory per idle connection; pass it in ``extra`` to measure that trade).
    Anonymous usage statistics stay on: Centrifugo sends them first after at least 6 hours,
    long after any bench run ends.

    ``extra`` is merged over the top level of the generated config (v5 flat keys, v6 nested
    sections). v5 (the newest the Go module proxy here serves) and v6 configs are both written,
    picked by the binary's flags. Stopped by its PID (SIGTERM, then SIGKILL after
    ``embedded.STOP_TIMEOUT``)."""

    name = "centrifugo"

    def __init__(
        self,
        root: Path,
        binary: Path | None = None,
        *,
        start_timeout: float = START_TIMEOUT,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        super().__init__(self.root / "centrifugo.log", start_timeout)
        self.config_path = self.root / "centrifugo.json"
        self.host = "127.0.0.1"
        self.secret = secrets.token_hex(32)
        """HMAC key for connection JWTs: ``token(server.secret, user)``."""
        self.api_key = secrets.token_hex(16)
        """Key of the server HTTP API (``X-API-Key``); the bench does not need it, but an empty
        key is no key."""
        self._binary = binary
        self._extra = extra or {}
        self._port = 0

    @property
    def port(self) -> int:
        self._require_running()
        return self._port

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/connection/websocket"

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.port}/health"

    def config(self, major: int, port: int) -> dict[str, Any]:
        """The configuration file's content for Centrifugo ``major`` (5 or 6)."""
        channels = {
            "allow_subscribe_for_client": True,
            "allow_publish_for_client": True,
            # Defaults already, written out because they are the point of the comparison.
            "presence": False,
            "join_leave": False,
            "history_size": 0,
            "force_recovery": False,
        }
        config: dict[str, Any]
        if major >= 6:
            config = {
                "http_server": {"address": self.host, "port": port},
                "engine": {"type": "memory"},
                "log": {"level": "info"},
                "health": {"enabled": True},
                "client": {"token": {"hmac_secret_key": self.secret}},
                "channel": {"without_namespace": channels},
                "http_api": {"key": self.api_key},
            }
        else:
            config = {
                "address": self.host,
                "port": port,
                "engine": "memory",
                "log_level": "info",
                "health": True,
                "token_hmac_secret_key": self.secret,
                "api_key": self.api_key,
                **channels,
            }
        return {**config, **self._extra}

    def start(self) -> Self:
        self.root.mkdir(parents=True, exist_ok=True)
        binary = self._binary or centrifugo_binary()
        major = _major_version(binary)

        def prepare() -> tuple[list[str], str]:
            self._port = free_port(self.host)
            self.config_path.write_text(json.dumps(self.config(major, self._port), indent=2))
            health = f"http://{self.host}:{self._port}/health"
            return [str(binary), "--config", str(self.config_path)], health

        self._start_retrying(3, prepare, cwd=self.root)
        return self


# --- the client protocol ------------------------------------------------------------------------
# Only the fields the bench reads are declared; msgspec skips the rest (connect results,
# publisher info, offsets) without building objects for them.


class _Error(msgspec.Struct):
    code: int = 0
    message: str = ""


class _Pub(msgspec.Struct):
    data: msgspec.Raw = msgspec.Raw(b"null")


class _Push(msgspec.Struct):
    channel: str = ""
    pub: _Pub | None = None


class _Reply(msgspec.Struct):
    """One server message: a reply (``id`` > 0, a result or ``error``), a push (``id`` 0,
    ``push``), or, with neither, a ping (``{}``)."""

    id: int = 0
    error: _Error | None = None
    push: _Push | None = None


class _Publish(msgspec.Struct):
    channel: str
    data: Any


class _Channel(msgspec.Struct):
    channel: str


class _Token(msgspec.Struct):
    token: str


class _Command(msgspec.Struct, omit_defaults=True):
    id: int
    connect: _Token | None = None
    subscribe: _Channel | None = None
    publish: _Publish | None = None


_decode_reply = msgspec.json.Decoder(_Reply).decode
_decode_data = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


class CentrifugoClient:
    """One Centrifugo connection over WebSocket, JSON protocol, no reconnect.

    Commands may be issued concurrently (each awaits its own reply by id), so a sender can
    keep many publishes in flight. A publish returns when Centrifugo replies: it has then
    handed the publication to its broker (the memory engine), which is its "accepted" point;
    delivery to subscribers is at most once. Publications on subscribed channels go to
    :attr:`on_publication` (channel, data) in the order the server sent them, from the reader
    task, which must not block.

    Lean on purpose: a thousands-per-process idle scenario keeps one reader task and one
    WebSocket per client and nothing else."""

    __slots__ = ("_ids", "_pending", "_reader", "_ws", "on_publication", "token", "ws_url")

    def __init__(self, ws_url: str, token: str) -> None:
        self.ws_url = ws_url
        self.token = token
        self.on_publication: Callable[[str, dict[str, Any]], None] | None = None
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[None]] = {}

    async def connect(self, timeout: float = REPLY_TIMEOUT) -> None:
        """Open the WebSocket and authenticate; raises :class:`CentrifugoError` if refused."""
        self._ws = await websockets.connect(
            self.ws_url,
            # Centrifugo's keepalive is its own ping (answered in _read); the library's
            # WebSocket pings would only add frames. Compression is off on the server by default.
            ping_interval=None,
            compression=None,
            max_size=MAX_FRAME,
            open_timeout=timeout,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read(self._ws))
        try:
            await self._command(_Command(0, connect=_Token(self.token)), timeout)
        except BaseException:
            await self.close()
            raise

    async def subscribe(self, channel: str, timeout: float = REPLY_TIMEOUT) -> None:
        await self._command(_Command(0, subscribe=_Channel(channel)), timeout)

    async def publish(
        self, channel: str, data: dict[str, Any], timeout: float = REPLY_TIMEOUT
    ) -> None:
        """Publish ``data`` into ``channel``; returns when Centrifugo has accepted it."""
        await self._command(_Command(0, publish=_Publish(channel, data)), timeout)

    async def close(self) -> None:
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        if ws is not None:
            await ws.close()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _command(self, command: _Command, timeout: float) -> None:
        ws = self._ws
        if ws is None:
            raise ConnectionError("not connected")
        command.id = next(self._ids)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[command.id] = future
        try:
            # msgspec writes compact JSON: no raw newline inside a command, which matters since
            # newlines separate commands (and the data is relayed to subscribers verbatim).
            await ws.send(_encode(command), text=True)
            await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(command.id, None)

    async def _read(self, ws: ClientConnection) -> None:
        error: BaseException = ConnectionError("connection closed")
        try:
            while True:
                frame = await ws.recv(decode=False)  # bytes: msgspec reads UTF-8 itself
                for line in frame.split(b"\n"):
                    if not line:
                        continue
                    reply = _decode_reply(line)
                    if reply.id:
                        future = self._pending.get(reply.id)
                        if future is not None and not future.done():
                            if reply.error is None:
                                future.set_result(None)
                            else:
                                future.set_exception(
                                    CentrifugoError(reply.error.code, reply.error.message)
                                )
                    elif reply.push is not None:
                        pub = reply.push.pub
                        if pub is not None and self.on_publication is not None:
                            self.on_publication(reply.push.channel, _decode_data(pub.data))
                    else:
                        # A ping. Answer only these: Centrifugo disconnects a client that sends
                        # a pong it did not ask for.
                        await ws.send(b"{}", text=True)
        except websockets.ConnectionClosed as exc:
            error = exc
        except Exception as exc:
            error = exc
            raise
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)


# --- the self-check -----------------------------------------------------------------------------


async def _self_check(server: CentrifugoServer, n: int = 1_000) -> list[float]:
    """``n`` messages from bob into alice's personal channel, one at a time; the latencies."""
    alice = CentrifugoClient(server.ws_url, token(server.secret, "alice"))
    bob = CentrifugoClient(server.ws_url, token(server.secret, "bob"))
    await alice.connect()
    await bob.connect()
    await alice.subscribe("personal.alice")
    arrived: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
    alice.on_publication = lambda _channel, data: arrived.put_nowait((time.perf_counter(), data))
    latencies = []
    for i in range(n):
        start = time.perf_counter()
        await bob.publish("personal.alice", {"i": i, "text": "x" * 100})
        at, data = await asyncio.wait_for(arrived.get(), 10)
        latencies.append(at - start)
        assert data["i"] == i, data
    await alice.close()
    await bob.close()
    return latencies


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="centrifugo-") as root:
        with CentrifugoServer(Path(root)) as server:
            latencies = sorted(asyncio.run(_self_check(server)))
        p50 = latencies[len(latencies) // 2] * 1000
        p99 = latencies[int(len(latencies) * 0.99)] * 1000
        print(
            f"centrifugo ({server.config_path.name} on 127.0.0.1, memory engine): "
            f"{len(latencies)} messages one by one, publish to receive "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        )


if __name__ == "__main__":
    main()
