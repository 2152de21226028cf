"""jetchat benchmarks: real jetchat, NATS and Postgres on this machine, the load generator in
this process (the server in its own), and the raw JetStream figures from the same NATS.

    .venv/bin/python -m bench.run                 # the standard set
    .venv/bin/python -m bench.run --only one_to_one --pairs 50
    .venv/bin/python -m bench.run --quick         # tiny sizes (the test suite's smoke run)

Prints a table and writes JSON (``--json``). docs/benchmarks.md says what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import psutil  # type: ignore[import-untyped]
from nats.js.api import StreamConfig

from jetchat.client import ChatClient
from jetchat.embedded import EmbeddedPostgres, NatsServer
from jetchat.process import JetchatProcess
from jetchat.seed import bulk_users

MESSAGE = "x" * 100  # the text of every benchmark message: a short chat line


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class Bench:
    def __init__(self, root: Path, quick: bool) -> None:
        self.root = root
        self.quick = quick
        self.results: dict[str, Any] = {}

    async def __aenter__(self) -> Bench:
        progress("starting nats-server and Postgres")
        self.nats = NatsServer(self.root / "nats").start()
        self.pg = EmbeddedPostgres(self.root / "pg").start()
        progress("starting jetchat")
        self.server = JetchatProcess(
            self.root / "jetchat",
            {
                "JETCHAT_NATS_URL": self.nats.url,
                "JETCHAT_POSTGRES_DSN": self.pg.dsn,
                "JETCHAT_LOG_LEVEL": "warning",
                "JETCHAT_WS_PING_INTERVAL_S": "600",
                "JETCHAT_MAX_GROUP_MEMBERS": "500",
            },
        ).start()
        self.url = self.server.base_url
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.stop()
        self.pg.stop()
        self.nats.stop()

    def rss(self) -> int:
        return int(psutil.Process(self.server.pid).memory_info().rss)

    async def clients(self, tokens: list[str], cursor: int | None = 0) -> list[ChatClient]:
        out = []
        for start in range(0, len(tokens), 100):
            batch = [ChatClient(self.url, t, cursor=cursor) for t in tokens[start : start + 100]]
            await asyncio.gather(*(c.connect(timeout=60) for c in batch))
            out += batch
        await asyncio.gather(*(c.caught_up.wait() for c in out))
        return out

    # --- the raw engine -----------------------------------------------------------------

    async def raw(self) -> None:
        """JetStream publish + subscribe with nats-py, and the nats CLI's own bench."""
        n = 5_000 if self.quick else 100_000
        nc = await nats.connect(self.nats.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="BENCH", subjects=["bench.>"]))
        payload = b"x" * 300  # about the size of a stored chat message
        received = 0
        done = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            nonlocal received
            received += 1
            if received == n:
                done.set()

        await nc.subscribe("bench.raw", cb=on_msg)  # core subscriber sees stored messages
        start = time.perf_counter()
        for _ in range(0, n, 1000):
            futures = [await js.publish_async("bench.raw", payload) for _ in range(1000)]
            await asyncio.wait_for(asyncio.gather(*futures), 30)
        await asyncio.wait_for(done.wait(), 60)
        rate = n / (time.perf_counter() - start)
        await js.delete_stream("BENCH")
        await nc.close()
        self.results["raw_nats_py"] = {"msgs_per_s": round(rate)}
        search = os.pathsep.join(
            [os.environ.get("PATH", ""), ".tools/bin", f"{Path.home()}/go/bin"]
        )
        cli = shutil.which("nats", path=search)
        if cli is None:
            return
        command = [cli, "bench", "js", "pub", "async", "bench.cli", "--server", self.nats.url]
        command += ["--msgs", str(n), "--size", "300", "--create", "--purge", "--batch", "500"]
        out = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=300, check=False
        )
        match = re.search(r"([\d,]+) msgs/sec", out.stdout + out.stderr)
        if match:
            self.results["raw_nats_cli"] = {"msgs_per_s": int(match.group(1).replace(",", ""))}

    # --- scenario 1: 1:1 send to receive at rising rates ----------------------------------

    async def one_to_one(self, pairs: int) -> None:
        users = await bulk_users(self.pg.dsn, "b1_", pairs * 2)
        senders = await self.clients([t for _, t in users[:pairs]])
        receivers = await self.clients([t for _, t in users[pairs:]])
        send_at: dict[str, float] = {}
        latencies: list[float] = []

        async def receive(c: ChatClient) -> None:
            while True:
                d = await c.next_message(timeout=3600)
                at = send_at.pop(d.message.client_id, None)
                if at is not None:
                    latencies.append(time.perf_counter() - at)

        readers = [asyncio.create_task(receive(c)) for c in receivers]
        inflight: set[asyncio.Future[Any]] = set()
        rates = [200, 500] if self.quick else [500, 1000, 2000, 3000, 4000, 6000, 8000, 12000]
        seconds = 1 if self.quick else 5
        steps, best = [], None
        serial = 0
        for rate in rates:
            latencies.clear()
            progress(f"1:1 at {rate} msg/s for {seconds} s")
            interval = pairs / rate
            start = time.perf_counter()

            async def talk(i: int, start: float = start, interval: float = interval) -> None:
                nonlocal serial
                sender, to = senders[i], users[pairs + i][0]
                next_at = start + i * interval / pairs
                while next_at < start + seconds:
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                    serial += 1
                    cid = f"b{serial}"
                    send_at[cid] = time.perf_counter()
                    # not awaited: the send rate is the schedule's, not the answers'
                    inflight.add(asyncio.ensure_future(sender.send(to, MESSAGE, client_id=cid)))
                    next_at += interval

            await asyncio.gather(*(talk(i) for i in range(pairs)))
            sent = int(rate * seconds)
            deadline = time.perf_counter() + 10
            while len(latencies) < sent and time.perf_counter() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - start
            step = {
                "target_per_s": rate,
                "delivered_per_s": round(len(latencies) / elapsed),
                "p50_ms": round(percentile(latencies, 50) * 1000, 1),
                "p99_ms": round(percentile(latencies, 99) * 1000, 1),
                "p999_ms": round(percentile(latencies, 99.9) * 1000, 1),
                "lost_or_late": max(0, sent - len(latencies)),
            }
            steps.append(step)
            if step["p99_ms"] < 100 and step["lost_or_late"] == 0:
                best = step
            else:
                break
        for t in [*readers, *inflight]:
            t.cancel()
        for c in senders + receivers:
            await c.close()
        self.results["one_to_one"] = {"pairs": pairs, "steps": steps, "best": best}

    # --- scenario 2: group fanout ----------------------------------------------------------

    async def fanout(self, size: int) -> None:
        users = await bulk_users(self.pg.dsn, f"b2_{size}_", size)
        owner_token = users[0][1]
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:
            resp = await http.post(
                "/v1/groups",
                json={"name": "bench", "members": [u for u, _ in users]},
                headers={"authorization": f"Bearer {owner_token}"},
            )
            conv = resp.json()["conv"]
        members = await self.clients([t for _, t in users])
        for c in members:  # the creation event
            await c.next_message(timeout=60)
        rounds = 5 if self.quick else 50
        to_last: list[float] = []
        start_all = time.perf_counter()
        for i in range(rounds):
            start = time.perf_counter()
            await members[0].send(conv, MESSAGE, client_id=f"f{size}-{i}")
            await asyncio.gather(*(c.next_message(timeout=60) for c in members))
            to_last.append(time.perf_counter() - start)
        elapsed = time.perf_counter() - start_all
        for c in members:
            await c.close()
        self.results[f"fanout_{size}"] = {
            "members": size,
            "p50_ms": round(percentile(to_last, 50) * 1000, 1),
            "p99_ms": round(percentile(to_last, 99) * 1000, 1),
            "deliveries_per_s": round(rounds * size / elapsed),
        }

    # --- scenario 3: idle connections --------------------------------------------------------

    async def idle(self, n: int) -> None:
        users = await bulk_users(self.pg.dsn, "b3_", n)
        before = self.rss()
        progress(f"opening {n} idle WebSockets")
        conns = await self.clients([t for _, t in users])
        await asyncio.sleep(1)
        during = self.rss()
        for c in conns:
            await c.close()
        self.results["idle_ws"] = {
            "connections": n,
            "rss_mb_before": round(before / 2**20, 1),
            "rss_mb_with": round(during / 2**20, 1),
            "kb_per_connection": round((during - before) / n / 1024, 1),
        }

    # --- scenario 4: catch-up ---------------------------------------------------------------

    async def catchup(self, n: int) -> None:
        (_, ta), (bob, tb) = await bulk_users(self.pg.dsn, "b4_", 2)
        [sender] = await self.clients([ta])
        progress(f"queueing {n} messages for an offline device")
        for first in range(0, n, 500):
            await asyncio.gather(
                *(
                    sender.send(bob, MESSAGE, client_id=f"c{i}", timeout=60)
                    for i in range(first, first + 500)
                )
            )
        await sender.close()
        start = time.perf_counter()
        reader = ChatClient(self.url, tb, cursor=0)
        await reader.connect()
        for _ in range(n):
            await reader.next_message(timeout=60)
        rate = n / (time.perf_counter() - start)
        await reader.close()
        self.results["catchup"] = {"messages": n, "drained_per_s": round(rate)}


def table(results: dict[str, Any]) -> str:
    lines = []
    raw = results.get("raw_nats_py", {}).get("msgs_per_s")
    for name, value in results.items():
        if name == "one_to_one":
            best = value["best"] or {}
            rate = best.get("delivered_per_s")
            ratio = f"  ({rate / raw:.0%} of raw nats-py)" if rate and raw else ""
            lines.append(
                f"1:1 WebSocket, {value['pairs']} pairs: best rate with p99 < 100 ms: "
                f"{rate} msg/s, p50 {best.get('p50_ms')} ms, p99 {best.get('p99_ms')} ms, "
                f"p999 {best.get('p999_ms')} ms{ratio}"
            )
            for step in value["steps"]:
                lines.append(f"    {step}")
        else:
            lines.append(f"{name}: {value}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="jetchat-bench-"))
    try:
        async with Bench(root, args.quick) as bench:
            chosen = set(args.only.split(",")) if args.only else None
            plan: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("raw", bench.raw),
                ("one_to_one", lambda: bench.one_to_one(args.pairs)),
                ("fanout", lambda: bench.fanout(100)),
                ("fanout", lambda: bench.fanout(20 if args.quick else 500)),
                ("catchup", lambda: bench.catchup(500 if args.quick else 10_000)),
                ("idle", lambda: bench.idle(args.idle)),
            ]
            for name, run in plan:
                if chosen is None or name in chosen:
                    progress(f"scenario {name}")
                    await run()
            return bench.results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--only", help="comma-separated: raw,one_to_one,fanout,catchup,idle")
    parser.add_argument("--pairs", type=int, default=20, help="1:1 sender/receiver pairs")
    parser.add_argument("--idle", type=int, default=2000, help="idle WebSockets to open")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.idle = min(args.pairs, 4), min(args.idle, 50)
    results = asyncio.run(main_async(args))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
