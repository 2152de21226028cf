"""The ``jetchat`` command as a newcomer meets it: help, configuration mistakes, a busy port,
and a quiet embedded start that ends with one line saying where it serves."""

from __future__ import annotations

import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from servers import processes_using, scratch_dir

from embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
INITDB_SAYS = ("The files belonging to this database system", "Success. You can now start")


def clean_env(**env: str) -> dict[str, str]:
    """This environment without the caller's own JETCHAT_* variables, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("JETCHAT_")}
    return {**base, **env}


def jetchat(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jetchat.cli", *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_help_is_plain_and_lists_every_setting() -> None:
    top = jetchat("--help")
    assert top.returncode == 0
    assert "``" not in top.stdout
    assert "jetchat serve --help" in top.stdout
    serve = jetchat("serve", "--help")
    assert serve.returncode == 0
    assert "  JETCHAT_PORT=8000\n      port HTTP and WebSocket listen on" in serve.stdout
    assert "  JETCHAT_POLL_TIMEOUT_S=25\n" in serve.stdout
    assert "JETCHAT_MAX_GROUP_MEMBERS=100" in jetchat("config", "--help").stdout


def test_config_markdown_prints_the_settings_table() -> None:
    out = jetchat("config", "--markdown").stdout.splitlines()
    assert out[0] == "| variable | default | meaning |"
    assert (
        "| `JETCHAT_PORT` | `8000` | port HTTP and WebSocket listen on; 0 picks a free one |" in out
    )


def test_a_bad_value_exits_naming_the_variable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = jetchat("serve", JETCHAT_PORT="abc", JETCHAT_DATA_DIR=str(data))
    assert done.returncode == 1
    assert done.stderr == (
        "jetchat: bad configuration: JETCHAT_PORT=abc: expected an integer from 0 to 65535\n"
    )
    assert not data.exists()


def test_an_unknown_variable_is_warned_about_with_the_closest_name() -> None:
    done = jetchat("config", JETCHAT_WS_ALLOWD_ORIGINS="*", JETCHAT_CASSANDRA_HOME="/opt")
    assert done.returncode == 0
    warnings = [line for line in done.stderr.splitlines() if '"warning"' in line]
    assert len(warnings) == 1
    assert (
        "JETCHAT_WS_ALLOWD_ORIGINS is not a jetchat setting; "
        "did you mean JETCHAT_WS_ALLOWED_ORIGINS?" in warnings[0]
    )


def test_a_busy_port_fails_at_once_before_any_server_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        began = time.monotonic()
        done = jetchat("serve", JETCHAT_PORT=str(port), JETCHAT_DATA_DIR=str(data))
        took = time.monotonic() - began
    assert done.returncode == 1
    assert done.stderr == (
        f"jetchat: cannot listen on 127.0.0.1:{port}: address already in use (set JETCHAT_PORT)\n"
    )
    assert done.stdout == ""
    # About 1 s (Python starting and importing); the bound leaves room for a loaded machine.
    assert took < 5, took
    assert not data.exists()  # no nats-server, no initdb
    assert processes_using(data) == []


def test_ops_jetchat_runs_the_command_or_says_how_to_install_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [ROOT / "ops" / "jetchat", "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0
    assert done.stdout.startswith("usage: jetchat")

    (tmp_path / "ops").mkdir()
    shutil.copy(ROOT / "ops" / "jetchat", tmp_path / "ops" / "jetchat")
    done = subprocess.run([tmp_path / "ops" / "jetchat", "--help"], capture_output=True, text=True)
    assert done.returncode == 1
    assert "run ./ops/serve or ./ops/test once" in done.stderr


class Terminal:
    """A pseudo-terminal for a child's stderr: what a person running it would see."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            self._chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self._chunks).decode(errors="replace").replace("\r\n", "\n")

    def close(self) -> None:
        self._reader.join(10)
        os.close(self.master)


def test_embedded_start_is_quiet_and_ends_with_one_line(tmp_path: Path) -> None:
    with scratch_dir(tmp_path) as scratch:
        data = scratch / "data"
        port = free_port()
        terminal = Terminal()
        stdout = (tmp_path / "stdout").open("w+b")
        proc = subprocess.Popen(
            [sys.executable, "-m", "jetchat.cli", "serve"],
            env=clean_env(
                JETCHAT_PORT=str(port),
                JETCHAT_DATA_DIR=str(data),
                JETCHAT_POLL_TIMOUT_S="5",
            ),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=terminal.slave,
        )
        os.close(terminal.slave)
        ready_line = f"jetchat serving http://127.0.0.1:{port} (data in {data}; Ctrl-C to stop)\n"
        try:
            deadline = time.monotonic() + 60
            while ready_line not in terminal.text:
                assert proc.poll() is None, terminal.text
                assert time.monotonic() < deadline, terminal.text
                time.sleep(0.05)
            assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
            assert processes_using(data / "nats") and processes_using(data / "postgres")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            terminal.close()
        text = terminal.text
        stdout.seek(0)
        assert stdout.read() == b""
        assert "Traceback" not in text
        assert not any(words in text for words in INITDB_SAYS), text
        assert all(words in (data / "postgres.log").read_text() for words in INITDB_SAYS)
        lines = text.splitlines()
        assert lines.count(ready_line.rstrip("\n")) == 1
        # JSON log lines: the warning, the servers started, the settings, serving, stopping.
        json_events = [line for line in lines if line.startswith("{")]
        assert len(json_events) + 1 == len(lines), text
        assert "did you mean JETCHAT_POLL_TIMEOUT_S?" in json_events[0]
        assert len(json_events) <= 8, text
        assert processes_using(data / "nats") == []
        assert processes_using(data / "postgres") == []


def test_ctrl_c_while_the_servers_start_stops_them_without_a_traceback(tmp_path: Path) -> None:
    with scratch_dir(tmp_path) as scratch:
        data = scratch / "data"
        proc = subprocess.Popen(
            [sys.executable, "-m", "jetchat.cli", "serve"],
            env=clean_env(JETCHAT_PORT="0", JETCHAT_DATA_DIR=str(data)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a group of its own, for the terminal's Ctrl-C below
        )
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert "embedded nats-server started" in first  # Postgres is next: initdb, 1 s or more
        os.killpg(proc.pid, signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(30) == 130
        assert rest == "jetchat: interrupted\n"
        assert processes_using(data) == []
