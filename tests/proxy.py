"""A real forward HTTP proxy (Debian's tinyproxy) configured like a restrictive corporate one:
no CONNECT tunnels (so no WebSocket), hop-by-hop headers such as Upgrade dropped, and an idle
timeout that cuts requests left waiting too long."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from embedded import free_port


class TinyProxy:
    def __init__(self, data_dir: Path, idle_timeout_s: int) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.idle_timeout_s = idle_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TinyProxy:
        binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o777)
        config = self.data_dir / "tinyproxy.conf"
        config.write_text(
            f"Port {self.port}\n"
            "Listen 127.0.0.1\n"
            f"Timeout {self.idle_timeout_s}\n"
            "Allow 127.0.0.1\n"
            "MaxClients 2000\n"
            # CONNECT only to 443: a tunnel to our port (a WebSocket through the proxy) is refused
            "ConnectPort 443\n"
            "LogLevel Warning\n"
            f'LogFile "{self.data_dir / "tinyproxy.log"}"\n'
        )
        log = open(self.data_dir / "stdout.log", "ab")
        self.proc = subprocess.Popen([binary, "-d", "-c", str(config)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.data_dir / "stdout.log").read_text())
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        raise RuntimeError("tinyproxy did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
