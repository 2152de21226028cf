"""Run ``jetchat`` as a real child process (end-to-end tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from embedded import free_port

HIGH_LIMITS = {
    "JETCHAT_SIGNUPS_PER_ADDRESS": "1000000",
    "JETCHAT_LOGIN_FAILURES_PER_ADDRESS": "1000000",
    "JETCHAT_SENDS_PER_USER": "1000000",
    "JETCHAT_SENDS_PER_DEVICE": "1000000",
    "JETCHAT_CONNECTIONS_PER_USER": "100000",
    "JETCHAT_POLLS_PER_DEVICE": "1000000",
}
"""Rate limits out of the way, for the tests and benchmarks: they sign up thousands of users
from one address (127.0.0.1) and send as fast as the server goes. The tests of the limits set
their own small ones (tests/integration/test_rate_limits.py)."""


class JetchatProcess:
    def __init__(
        self, data_dir: Path, env: dict[str, str], port: int = 0, command: str = "serve"
    ) -> None:
        self.command = command
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = {
            **os.environ,
            "JETCHAT_HOST": "127.0.0.1",
            "JETCHAT_PORT": str(self.port),
            "JETCHAT_DATA_DIR": str(data_dir),
            "JETCHAT_LOG_LEVEL": "info",
            **env,
        }
        self.log_path = data_dir / f"jetchat-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30) -> JetchatProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jetchat.cli", self.command],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jetchat exited: {self.log_tail()}")
            if self.command == "archiver":
                if "archiver running" in self.log_tail():
                    return self
                time.sleep(0.05)
                continue
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"jetchat not ready in {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text()[-3000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, as a crash."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait: the clean shutdown path. Returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self.proc.returncode
