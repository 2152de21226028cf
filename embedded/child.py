"""The base of every server jetchat or its tests run as a child process: spawned in a session of
its own, its output in a log file, ready once a health URL answers, stopped by the PID we know,
never by process name, so that other servers on the machine are left alone. The API is
synchronous: it runs before (or outside) the event loop."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

POLL_S = 0.01  # seconds between readiness / exit checks
LOG_TAIL = 40  # lines of a server log quoted in an error

STOP_TIMEOUT = 10.0
"""Seconds a server gets to shut down cleanly after the first signal, before the harder one."""

POLL_S = 0.01  # seconds between readiness / exit checks
LOG_TAIL = 40  # lines of a server log quoted in an error


class EmbeddedServerError(RuntimeError):
    """An embedded server failed to start or to stop; the message quotes its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0, read it, close).

    Another process may take it before we use it; :class:`NatsServer` retries on that."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
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


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
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
                        + log_tail(self.log_path)
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
                if "address already in use" in read_from(self.log_path, log_start):
                    raise PortTaken
                raise EmbeddedServerError(
                    f"{self.name} exited with code {code} while starting; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if http_ok(health_url):
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise EmbeddedServerError(
                    f"{self.name} (pid {proc.pid}) not healthy after {self._start_timeout} s; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(POLL_S)

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


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - our own http URL
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
