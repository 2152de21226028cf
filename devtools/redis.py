"""A real ``redis-server`` as a child process, for the tests (Debian's ``redis-server``, which
ops/test installs): on 127.0.0.1 and a free port, its files in a folder of its own, no
persistence, stopped by its PID (:class:`embedded.child.ChildServer`). Ready once it answers
``PING``. jetchat itself never starts one: without ``JETCHAT_REDIS_URL`` it limits in process."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Self

from embedded.child import ChildServer, EmbeddedServerError, free_port

START_TIMEOUT = 10.0


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedServerError("redis-server is not installed (apt-get install redis-server)")
    return found


class RedisServer(ChildServer):
    name = "redis-server"

    def __init__(self, data_dir: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.data_dir = Path(data_dir)
        super().__init__(self.data_dir / "redis-server.log", START_TIMEOUT)
        self.host = host
        self._want_port = port
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = redis_server_binary()

        def prepare() -> tuple[list[str], str]:
            self.port = self._want_port or free_port(self.host)
            args = [
                binary,
                "--port", str(self.port),
                "--bind", self.host,
                "--dir", str(self.data_dir),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
            ]  # fmt: skip
            return args, ""

        self._start_retrying(3, prepare)
        return self

    def _ready(self) -> bool:
        """``PING`` answers ``+PONG`` (RESP, no client library needed)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False
