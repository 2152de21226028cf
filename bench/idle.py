"""Scenario 3: resident memory of the jetchat process per idle WebSocket and per pending poll.

    .venv/bin/python -m bench.idle --ws 10000 --polls 10000

Each kind runs against a fresh jetchat (with its own NATS and Postgres, as ``bench.run``
starts them), so memory freed by one kind is not counted as reused by the other. The
connections come from worker processes of this module (``--worker``): opening 10,000 from
one Python process would take longer than the server needs to accept them.

- An idle WebSocket is one that said ``hello`` and got ``caught_up``: it is subscribed, watched
  for presence and waits for messages. The clients use ``websockets`` directly, without pings
  or compression.
- A pending poll is ``GET /v1/poll?timeout=...`` that the server holds, waiting for a message.
  The clients write the request by hand on a plain asyncio stream, one connection each:
  nothing between the socket and the request (httpx would add a pool, a connection object and
  anyio streams per poll in the load processes, and its pool limits would have to be lifted
  for 10,000 requests at once). The server must hold polls that long: ``JETCHAT_POLL_TIMEOUT_S``
  above the time the measurement takes (``main`` sets it to an hour); the measurement fails
  rather than count polls that were already answered.

RSS is read with psutil once the process has settled, before the connections (after a
warm-up round of a hundred, closed again or answered at once, so one-time allocations are not
counted per connection) and with them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil  # type: ignore[import-untyped]
from websockets.asyncio.client import ClientConnection, connect

from bench.load import raise_nofile
from bench.run import Bench, progress

WARM_UP = 100
"""Connections opened and closed before the "before" figure."""
PER_WORKER = 2_500
"""Connections per load process; one Python process opens about that many per 10 s."""
CONCURRENCY = 50
"""Handshakes in flight per load process."""
POLL_TIMEOUT_S = 3600
"""What the polls ask for; the server caps it at its JETCHAT_POLL_TIMEOUT_S."""
OPEN_TIMEOUT_S = 120.0
ROOT = Path(__file__).resolve().parents[1]


async def idle_websockets(base_url: str, tokens: list[str], server_pid: int) -> dict[str, Any]:
    """RSS of the server per idle WebSocket (after ``hello`` and ``caught_up``)."""
    return await _measure("ws", base_url, tokens, server_pid)


async def pending_polls(base_url: str, tokens: list[str], server_pid: int) -> dict[str, Any]:
    """RSS of the server per pending long poll (one per device)."""
    return await _measure("poll", base_url, tokens, server_pid)


async def _measure(kind: str, base_url: str, tokens: list[str], pid: int) -> dict[str, Any]:
    raise_nofile()
    server = psutil.Process(pid)
    n = len(tokens)
    label = "WebSockets" if kind == "ws" else "pending polls"
    warm = tokens[: min(WARM_UP, n)]
    progress(f"warming up with {len(warm)} {label}")
    if kind == "ws":
        async with _Load(kind, base_url, warm) as load:
            await load.opened()
    else:  # polls that answer at once: the same path, and nothing left pending
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
            for token in warm:
                auth = {"authorization": f"Bearer {token}"}
                (await http.get("/v1/poll?timeout=0", headers=auth)).raise_for_status()
    await _wait_gauge(base_url, kind, 0)
    before = await _settled_rss(server)
    progress(f"opening {n} {label}")
    start = time.perf_counter()
    async with _Load(kind, base_url, tokens) as load:
        await load.opened()
        await _wait_gauge(base_url, kind, n)
        progress(f"{n} {label} open in {time.perf_counter() - start:.1f} s; settling")
        during = await _settled_rss(server)
        # polls answered while we waited would make the figure one of fewer polls
        await _wait_gauge(base_url, kind, n, timeout=1)
    await _wait_gauge(base_url, kind, 0)  # the server let them all go
    return {
        "connections": n,
        "rss_mb_before": round(before / 2**20, 1),
        "rss_mb_with": round(during / 2**20, 1),
        "kb_per_connection": round((during - before) / n / 1024, 2),
    }


async def _settled_rss(server: psutil.Process, limit_s: float = 60) -> int:
    """RSS once it stops moving: three readings 0.5 s apart within 256 KiB of each other."""
    readings: list[int] = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        readings.append(int(server.memory_info().rss))
        recent = readings[-3:]
        if len(recent) == 3 and max(recent) - min(recent) < 256 * 1024:
            break
        await asyncio.sleep(0.5)
    return readings[-1]


_GAUGES = {"ws": 'jetchat_connections{transport="ws"}', "poll": "jetchat_pending_polls"}


async def _wait_gauge(base_url: str, kind: str, want: int, timeout: float = 120) -> None:
    """Wait until the server itself counts ``want`` connections (or polls) of this kind."""
    name = _GAUGES[kind]
    deadline = time.monotonic() + timeout
    value = -1.0
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        while True:
            text = (await http.get("/metrics")).text
            value = 0.0
            for line in text.splitlines():
                if line.startswith(name + " "):
                    value = float(line.split()[-1])
            if value == want:
                return
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    hint = " (is JETCHAT_POLL_TIMEOUT_S long enough?)" if kind == "poll" else ""
    raise RuntimeError(f"server counts {value:.0f} for {name}, expected {want}{hint}")


class _Load:
    """Worker processes holding the connections: each gets its share of the tokens on stdin,
    says ``ready`` once all its connections are open, and closes them when stdin closes."""

    def __init__(self, kind: str, base_url: str, tokens: list[str]) -> None:
        self._kind = kind
        self._base_url = base_url
        self._tokens = tokens
        self._procs: list[asyncio.subprocess.Process] = []

    async def __aenter__(self) -> _Load:
        workers = max(1, -(-len(self._tokens) // PER_WORKER))
        for i in range(workers):
            share = self._tokens[i::workers]
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.idle",
                "--worker",
                self._kind,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=ROOT,
                limit=1 << 24,
            )
            self._procs.append(proc)
            assert proc.stdin is not None
            job = {"url": self._base_url, "tokens": share}
            proc.stdin.write(json.dumps(job).encode() + b"\n")
            await proc.stdin.drain()
        return self

    async def opened(self) -> None:
        async def ready(proc: asyncio.subprocess.Process) -> None:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            if line.strip() != b"ready":
                raise RuntimeError(f"load worker failed: {line!r}")

        await asyncio.gather(*(ready(p) for p in self._procs))

    async def __aexit__(self, *exc: object) -> None:
        for proc in self._procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in self._procs:
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# --- the load worker (a process of its own) ------------------------------------------------


async def _worker(kind: str) -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    job = json.loads(await stdin.readline())
    url, tokens = job["url"], job["tokens"]
    limit = asyncio.Semaphore(CONCURRENCY)
    closers: list[Callable[[], Awaitable[None]]] = []
    opener = _open_ws if kind == "ws" else _open_poll

    async def open_one(token: str) -> None:
        async with limit:
            for attempt in range(5):
                try:
                    closers.append(await asyncio.wait_for(opener(url, token), OPEN_TIMEOUT_S))
                    return
                except OSError:  # the listen backlog was full: try again shortly
                    await asyncio.sleep(0.1 * 2**attempt)
            closers.append(await asyncio.wait_for(opener(url, token), OPEN_TIMEOUT_S))

    try:
        await asyncio.gather(*(open_one(t) for t in tokens))
        print("ready", flush=True)
    except Exception as exc:
        print(f"failed: {exc!r}", flush=True)
    await stdin.read()  # until the parent closes our stdin
    for start in range(0, len(closers), 500):
        await asyncio.gather(*(c() for c in closers[start : start + 500]), return_exceptions=True)


async def _open_ws(base_url: str, token: str) -> Callable[[], Awaitable[None]]:
    ws: ClientConnection = await connect(
        base_url.replace("http", "ws", 1) + "/v1/ws",
        additional_headers={"authorization": f"Bearer {token}"},
        compression=None,
        ping_interval=None,
        open_timeout=OPEN_TIMEOUT_S,
        max_queue=4,
    )
    await ws.send('{"type":"hello","cursor":0}')
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == "caught_up":
            break
        if frame["type"] in ("error", "resync_needed"):
            raise RuntimeError(f"unexpected frame {frame}")

    async def close() -> None:
        await ws.close()

    return close


async def _open_poll(base_url: str, token: str) -> Callable[[], Awaitable[None]]:
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /v1/poll?timeout={POLL_TIMEOUT_S} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    await writer.drain()

    async def close() -> None:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    _ = reader  # the answer, if any, is not read: the server's gauge tells what is pending
    return close


# --- the command -----------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from devtools.seed import bulk_users

    raise_nofile()  # here and in the workers; `jetchat serve` raises its own
    # hold polls for the whole measurement (the production cap is 25 s)
    os.environ.setdefault("JETCHAT_POLL_TIMEOUT_S", str(POLL_TIMEOUT_S))
    results: dict[str, Any] = {}
    plan = [("idle_ws", args.ws, idle_websockets), ("pending_polls", args.polls, pending_polls)]
    for name, n, run in plan:
        if n <= 0:
            continue
        root = Path(tempfile.mkdtemp(prefix="jetchat-idle-"))
        try:
            async with Bench(root, argparse.Namespace(quick=False, peer=False, servers=1)) as bench:
                progress(f"creating {n} users")
                users = await bulk_users(bench.pg.dsn, "idle_", n)
                results[name] = await run(bench.url, [t for _, t in users], bench.server.pid)
                progress(f"{name}: {results[name]}")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.idle", description=__doc__)
    parser.add_argument("--ws", type=int, default=10_000, help="idle WebSockets to open")
    parser.add_argument("--polls", type=int, default=10_000, help="pending polls to hold")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--worker", choices=["ws", "poll"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(_worker(args.worker))
        return {}
    results = asyncio.run(main_async(args))
    for name, value in results.items():
        print(f"{name}: {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
