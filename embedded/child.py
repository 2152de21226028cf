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

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.port = port


class ChildServer:
    """A server run as our child process, in a session of its own (a Ctrl-C meant for the
    parent does not reach it: we stop it ourselves, in order), its output in ``output_path``,
    stopped by its PID. Subclasses pick their ports and arguments in :meth:`start` and hand
    them to :meth:`_start_retrying`; it is ready once :meth:`_ready` says so (by default, once
    the health URL that ``prepare`` returned answers 200).

    ``stop_at_exit``: stop it when this Python exits, should :meth:`stop` not have been called
    (False for a server meant to outlive the command that started it). ``pidfile``: where its
    PID is written while it runs, for a later command to find it."""

    name = "server"  # in error messages

    def __init__(
        self,
        output_path: Path,
        start_timeout: float,
        *,
        stop_at_exit: bool = True,
        pidfile: Path | None = None,
    ) -> None:
        self.output_path = output_path
        self.pidfile = pidfile
        self._start_timeout = start_timeout
        self._stop_at_exit = stop_at_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._health_url = ""

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

    def _ready(self) -> bool:
        """Whether the server, running, serves. By default its health URL answers 200."""
        return http_ok(self._health_url)

    def _start_failed(self, code: int, output: str) -> Exception:
        """What to raise when the server exited with ``code`` while starting, having written
        ``output``: :class:`PortTaken` (start again on other ports) or an error to report."""
        if "address already in use" in output.lower():
            return PortTaken()
        return EmbeddedServerError(
            f"{self.name} exited with code {code} while starting; "
            f"log {self.output_path}:\n{log_tail(self.output_path)}"
        )

    def _start_retrying(
        self,
        attempts: int,
        prepare: Callable[[], tuple[list[str], str]],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``prepare()`` picks the ports and returns the command and its health URL ("" when
        :meth:`_ready` looks elsewhere). A port picked by free_port() can be taken before the
        server binds it; then, ``attempts`` times in all, prepare and start again."""
        if self._proc is not None:
            raise EmbeddedServerError(f"{self.name} already started (pid {self._proc.pid})")
        for attempt in range(attempts):
            args, self._health_url = prepare()
            try:
                self._spawn_and_wait(args, cwd, env)
                return
            except PortTaken as taken:
                if attempt == attempts - 1:
                    port = f" ({taken.port})" if taken.port else ""
                    raise EmbeddedServerError(
                        f"{self.name} could not bind its ports{port}: another process has it; "
                        f"log {self.output_path}:\n" + log_tail(self.output_path)
                    ) from None

    def _spawn_and_wait(
        self, args: list[str], cwd: Path | None, env: dict[str, str] | None
    ) -> None:
        log: IO[bytes]
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        with self.output_path.open("ab") as log:
            log_start = log.tell()
            log.write(f"--- jetchat: starting {' '.join(args)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._proc = proc
        if self.pidfile is not None:
            self.pidfile.write_text(f"{proc.pid}\n")
        if self._stop_at_exit:
            atexit.register(self.stop)
        deadline = time.monotonic() + self._start_timeout
        while True:
            code = proc.poll()
            if code is not None:
                self._forget()
                raise self._start_failed(code, read_from(self.output_path, log_start))
            if self._ready():
                return
            if time.monotonic() >= deadline:
                self.stop()
                raise EmbeddedServerError(
                    f"{self.name} (pid {proc.pid}) not ready after {self._start_timeout} s; "
                    f"log {self.output_path}:\n{log_tail(self.output_path)}"
                )
            time.sleep(POLL_S)

    def _forget(self) -> subprocess.Popen[bytes] | None:
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if self.pidfile is not None:
            self.pidfile.unlink(missing_ok=True)
        return proc

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to our server's PID, wait up to ``timeout`` s, then SIGKILL. Idempotent."""
        proc = self._forget()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, no drain: what a crash looks like."""
        proc = self._forget()
        if proc is not None:
            proc.kill()
            proc.wait()

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
