"""jetchat benchmarks: real jetchat, NATS and Postgres (and Cassandra for the archiver) on this
machine, clients in load-generator processes of their own, the raw JetStream figures from the
same NATS, and Centrifugo (the peer) driven by the same load generator.

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
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import nats
import psutil  # type: ignore[import-untyped]
from nats.js.api import StreamConfig

from bench.load import Peer, Target, Workers, WorkerSpec, split
from devtools.jetchat_process import HIGH_LIMITS, JetchatProcess
from devtools.seed import bulk_users
from embedded import EmbeddedPostgres, NatsServer
from jetchat_client import ChatClient

MESSAGE = "x" * 100  # the text of every benchmark message: a short chat line
P99_LIMIT_MS = 100.0  # scenario 1: the highest rate whose p99 stays under this


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def rss(pids: list[int]) -> int:
    return sum(int(psutil.Process(pid).memory_info().rss) for pid in pids)


class Cpu:
    """CPU seconds used by some processes between two points: the share of a core each
    (or each group of processes) used during a step tells who was the bottleneck."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self._procs = {name: [psutil.Process(p) for p in group] for name, group in pids.items()}
        self._start = time.perf_counter()
        self._before = {name: self._used(p) for name, p in self._procs.items()}

    @staticmethod
    def _used(procs: list[Any]) -> float:
        return float(sum(t.user + t.system for t in (p.cpu_times() for p in procs)))

    def shares(self) -> dict[str, float]:
        wall = time.perf_counter() - self._start
        return {
            name: round((self._used(p) - self._before[name]) / wall, 2)
            for name, p in self._procs.items()
        }


class Bench:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root = root
        self.args = args
        self.quick: bool = args.quick
        self.results: dict[str, Any] = {}
        self.centrifugo: Any = None

    async def __aenter__(self) -> Bench:
        progress("starting nats-server and Postgres")
        self.nats = NatsServer(self.root / "nats").start()
        self.pg = EmbeddedPostgres(self.root / "pg").start()
        progress("starting jetchat")
        self.env = {
            "JETCHAT_NATS_URL": self.nats.url,
            "JETCHAT_POSTGRES_DSN": self.pg.dsn,
            "JETCHAT_LOG_LEVEL": "warning",
            "JETCHAT_WS_PING_INTERVAL_S": "600",
            "JETCHAT_MAX_GROUP_MEMBERS": "500",
            # history is archived by a process of its own (scenario 5), not by the server
            # under measurement
            "JETCHAT_ARCHIVER": "false",
            **HIGH_LIMITS,  # the engine's speed is measured, not the abuse limits
        }
        self.servers = [
            JetchatProcess(self.root / f"jetchat{i}", self.env).start()
            for i in range(self.args.servers)
        ]
        self.server = self.servers[0]
        self.url = self.server.base_url
        progress(f"jetchat serve: pids {[s.pid for s in self.servers]}")
        self.jetchat = Target(
            "jetchat", tuple(s.base_url.replace("http", "ws", 1) + "/v1/ws" for s in self.servers)
        )
        if self.args.peer:
            self.start_centrifugo()
        return self

    def start_centrifugo(self) -> None:
        from bench.centrifugo import CentrifugoServer, centrifugo_binary
        from embedded import EmbeddedServerError

        try:
            centrifugo_binary()
        except EmbeddedServerError:
            progress("no centrifugo binary (ops/centrifugo fetch installs it): peer skipped")
            return
        progress("starting Centrifugo (the peer)")
        self.centrifugo = CentrifugoServer(self.root / "centrifugo").start()

    async def __aexit__(self, *exc: object) -> None:
        if self.centrifugo is not None:
            self.centrifugo.stop()
        for server in self.servers:
            server.stop()
        self.pg.stop()
        self.nats.stop()

    def targets(self) -> list[tuple[Target, list[int]]]:
        """Each system under test with the PIDs whose memory and CPU count."""
        out = [(self.jetchat, [s.pid for s in self.servers])]
        if self.centrifugo is not None:
            c = self.centrifugo
            out.append((Target("centrifugo", (c.ws_url,), c.secret), [c.pid]))
        return out

    async def peers(self, target: Target, prefix: str, n: int) -> list[Peer]:
        if target.kind == "jetchat":
            return [Peer(u, t) for u, t in await bulk_users(self.pg.dsn, prefix, n)]
        return [Peer(f"{prefix}{i}") for i in range(n)]

    def record(self, scenario: str, target: Target, value: dict[str, Any]) -> None:
        self.results.setdefault(scenario, {})[target.kind] = value

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

    async def one_to_one(self, target: Target, pids: list[int]) -> None:
        pairs, nworkers = self.args.pairs, self.args.workers
        peers = await self.peers(target, "b1_", pairs * 2)
        couples = list(zip(peers[:pairs], peers[pairs:], strict=True))
        specs = [WorkerSpec(target, pairs=part) for part in split(couples, nworkers)]
        rates = [200, 500] if self.quick else self.args.rates
        seconds = 1 if self.quick else self.args.seconds
        steps: list[dict[str, Any]] = []
        best = None
        async with Workers(specs) as workers:
            await workers.all("open")
            groups = {"server": pids, "nats": [self.nats.pid], "load": workers.pids}
            for rate in rates:
                progress(f"1:1 on {target.kind} at {rate} msg/s for {seconds} s")
                cpu = Cpu(groups)
                start = time.perf_counter()
                answers = await workers.all(
                    "pairs_step", rate / pairs, seconds, time.perf_counter() + 0.2
                )
                elapsed = time.perf_counter() - start - 0.2
                latencies = [x for a in answers for x in a["latencies"]]
                sent = sum(a["sent"] for a in answers)
                step = {
                    "target_per_s": rate,
                    "delivered_per_s": round(len(latencies) / max(elapsed, seconds)),
                    "p50_ms": ms(percentile(latencies, 50)),
                    "p99_ms": ms(percentile(latencies, 99)),
                    "p999_ms": ms(percentile(latencies, 99.9)),
                    "lost_or_late": max(0, sent - len(latencies)),
                    "cpu_cores": cpu.shares(),
                }
                # CPU time of the server per message: robust to a busy machine, unlike latency
                step["server_cpu_us_per_msg"] = round(
                    step["cpu_cores"]["server"] / max(1, step["delivered_per_s"]) * 1e6
                )
                steps.append(step)
                progress(f"   p50 {step['p50_ms']} ms, p99 {step['p99_ms']} ms")
                if step["p99_ms"] < P99_LIMIT_MS and step["lost_or_late"] == 0:
                    best = step
                else:
                    break
                await asyncio.sleep(1)  # let the last step's stragglers settle
        self.record(
            "one_to_one",
            target,
            {"pairs": pairs, "processes": len(pids), "steps": steps, "best": best},
        )

    # --- scenario 2: group fanout ----------------------------------------------------------

    async def fanout(self, target: Target, pids: list[int], size: int) -> None:
        peers = await self.peers(target, f"b2_{size}_", size)
        group = "group.bench"
        if target.kind == "jetchat":
            async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:
                resp = await http.post(
                    "/v1/groups",
                    json={"name": "bench", "members": [p.user for p in peers]},
                    headers={"authorization": f"Bearer {peers[0].token}"},
                )
                group = resp.json()["conv"]
        nworkers = self.args.workers
        specs = [
            WorkerSpec(target, members=part, group=group, sender=i == 0)
            for i, part in enumerate(split(peers, nworkers))
        ]
        rounds = 5 if self.quick else 50
        async with Workers(specs) as workers:
            await workers.all("open")
            progress(f"fanout to {size} on {target.kind}: {rounds} messages, one at a time")
            # One at a time, 0.3 s apart: the time from send to the last member's receipt.
            spaced = await workers.all("group_send", rounds, 0.3, time.perf_counter() + 0.2)
            to_last = []
            for n in range(rounds):
                seen = [a["seen"][n] for a in spaced if n in a["seen"]]
                if sum(c for _, _, c in seen) == size:
                    to_last.append(max(last for _, last, _ in seen) - seen[0][0])
            progress(f"fanout to {size} on {target.kind}: {rounds} messages at once")
            # All at once: how many deliveries per second the server makes.
            cpu = Cpu({"server": pids, "nats": [self.nats.pid]})
            burst = await workers.all("group_send", rounds, 0.0, time.perf_counter() + 0.2)
            cores = cpu.shares()
            first = min(at for a in burst for at, _, _ in a["seen"].values())
            last = max(last for a in burst for _, last, _ in a["seen"].values())
            delivered = sum(c for a in burst for _, _, c in a["seen"].values())
        self.record(
            f"fanout_{size}",
            target,
            {
                "members": size,
                "p50_ms": ms(percentile(to_last, 50)),
                "p99_ms": ms(percentile(to_last, 99)),
                "incomplete": rounds - len(to_last),
                "deliveries_per_s": round(delivered / (last - first)),
                "missing_in_burst": rounds * size - delivered,
                "cpu_cores": cores,
            },
        )

    # --- scenario 3: idle connections --------------------------------------------------------

    async def idle(self, target: Target, pids: list[int], n: int) -> None:
        if target.kind == "jetchat":
            # each kind against a fresh jetchat, NATS and Postgres (bench/idle.py): memory
            # that earlier scenarios freed would otherwise be counted as reused
            from bench import idle

            found = await idle.main_async(argparse.Namespace(ws=n, polls=n))
            self.record("idle_ws", target, found["idle_ws"])
            self.record("idle_poll", target, found["pending_polls"])
            return
        peers = await self.peers(target, "b3_", n)
        specs = [WorkerSpec(target, idle=part) for part in split(peers, self.args.workers)]
        async with Workers(specs) as workers:
            await asyncio.sleep(1)
            before = rss(pids)
            progress(f"opening {n} idle WebSockets to {target.kind}")
            await workers.all("open_idle")
            await asyncio.sleep(2)
            during = rss(pids)
        self.record(
            "idle_ws",
            target,
            {
                "connections": n,
                "rss_mb_before": round(before / 2**20, 1),
                "rss_mb_with": round(during / 2**20, 1),
                "kb_per_connection": round((during - before) / n / 1024, 1),
            },
        )

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
        self.record("catchup", self.jetchat, {"messages": n, "drained_per_s": round(rate)})

    # --- scenario 5: the archiver into Cassandra --------------------------------------------

    async def archiver(self, rate: int) -> None:
        """A backlog (the messages of the scenarios before, and more sent now with no archiver
        running) drained by one ``jetchat archiver`` process into a real Cassandra node: rows
        per second. Then, archiver running, 1:1 load at ``rate`` for 10 s: the lag, sampled."""
        from devtools.cassandra import CassandraNode, jars_present
        from jetstream.archiver import archiver_lag
        from jetstream.streams import JetStreamSettings

        if not jars_present():
            progress("no Cassandra jars (ops/cassandra fetch): archiver scenario skipped")
            return
        progress("starting Cassandra")
        node = CassandraNode(self.root / "cassandra", unsafe_system=True).start()
        nc = await nats.connect(self.nats.url)
        js, settings = nc.jetstream(), JetStreamSettings()
        archiver = JetchatProcess(
            self.root / "archiver",
            {
                **self.env,
                "JETCHAT_CASSANDRA_HOSTS": node.host,
                "JETCHAT_CASSANDRA_PORT": str(node.port),
                "JETCHAT_LOG_LEVEL": "info",  # its start is seen in its log
            },
            command="archiver",
        )
        pairs = min(self.args.pairs, 10)
        peers = await self.peers(self.jetchat, "b5_", pairs * 2)
        couples = list(zip(peers[:pairs], peers[pairs:], strict=True))
        specs = [WorkerSpec(self.jetchat, pairs=part) for part in split(couples, 2)]
        seconds = 2 if self.quick else 10
        try:
            async with Workers(specs) as workers:
                await workers.all("open")
                progress(f"a backlog: {rate} msg/s for {seconds} s with no archiver running")
                await workers.all("pairs_step", rate / pairs, seconds, time.perf_counter() + 0.2)
                backlog = (await archiver_lag(js, settings)).total
                progress(f"draining {backlog} inbox entries into Cassandra")
                archiver.start(timeout=120)
                start = time.perf_counter()  # from the moment it is running
                cpu = Cpu({"archiver": [archiver.pid], "cassandra": [node.pid]})
                while (await archiver_lag(js, settings)).total > 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                drain_s = time.perf_counter() - start
                cores = cpu.shares()
                progress(f"1:1 at {rate} msg/s for {seconds} s with the archiver running")
                lags: list[int] = []

                async def sample() -> None:
                    while True:
                        lags.append((await archiver_lag(js, settings)).total)
                        await asyncio.sleep(0.5)

                sampler = asyncio.create_task(sample())
                await workers.all("pairs_step", rate / pairs, seconds, time.perf_counter() + 0.2)
                settle = time.perf_counter()
                while (await archiver_lag(js, settings)).total > 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                sampler.cancel()
                after_s = time.perf_counter() - settle
        finally:
            archiver.stop()
            await nc.close()
            node.stop()
        # Entries, not rows: every inbox entry is read and acknowledged, one copy of each
        # message is written (of a 1:1 message one of two, of a group message one of N).
        self.record(
            "archiver",
            self.jetchat,
            {
                "backlog_entries": backlog,
                "entries_per_s": round(backlog / drain_s),
                "drain_cpu_cores": cores,
                "load_per_s": rate,
                "max_lag_entries": max(lags, default=0),
                "lag_gone_after_load_s": round(after_s, 2),
            },
        )


def ratio(ours: float | None, theirs: float | None, higher_is_better: bool = True) -> str:
    if not ours or not theirs:
        return ""
    return f" ({ours / theirs if higher_is_better else theirs / ours:.2f}x Centrifugo)"


def table(results: dict[str, Any]) -> str:
    """One line per scenario and system: jetchat beside Centrifugo, ratios to the raw engine."""
    lines = []
    raw = results.get("raw_nats_py", {}).get("msgs_per_s")
    for name in ("raw_nats_py", "raw_nats_cli"):
        if name in results:
            lines.append(f"{name}: {results[name]['msgs_per_s']} msg/s")
    for name, systems in results.items():
        if name.startswith("raw_"):
            continue
        peer = systems.get("centrifugo", {})
        for kind, value in systems.items():
            if name == "one_to_one":
                best = value["best"] or {}
                rate = best.get("delivered_per_s")
                vs = f" ({rate / raw:.0%} of raw nats-py)" if rate and raw else ""
                if kind == "jetchat":
                    vs += ratio(rate, (peer.get("best") or {}).get("delivered_per_s"))
                lines.append(
                    f"1:1 {kind}, {value['pairs']} pairs, {value['processes']} process(es): "
                    "best rate with p99 < 100 ms: "
                    f"{rate} msg/s, p50 {best.get('p50_ms')} ms, p99 {best.get('p99_ms')} ms, "
                    f"p999 {best.get('p999_ms')} ms{vs}"
                )
                for step in value["steps"]:
                    lines.append(f"    {step}")
            elif name.startswith("fanout"):
                vs = ""
                if kind == "jetchat":
                    vs = ratio(value["deliveries_per_s"], peer.get("deliveries_per_s"))
                of_raw = f" ({value['deliveries_per_s'] / raw:.0%} of raw nats-py)" if raw else ""
                lines.append(
                    f"{name} {kind}: to the last member p50 {value['p50_ms']} ms, "
                    f"p99 {value['p99_ms']} ms; {value['deliveries_per_s']} deliveries/s"
                    f"{of_raw}{vs}"
                )
            elif name.startswith("idle"):
                vs = ""
                if kind == "jetchat":
                    vs = ratio(value["kb_per_connection"], peer.get("kb_per_connection"), False)
                lines.append(
                    f"{name} {kind}: {value['kb_per_connection']} KB per connection at "
                    f"{value['connections']}{vs}"
                )
            elif name == "catchup":
                vs = f" ({value['drained_per_s'] / raw:.0%} of raw nats-py)" if raw else ""
                lines.append(
                    f"catch-up {kind}: {value['messages']} messages drained at "
                    f"{value['drained_per_s']} msg/s{vs}"
                )
            elif name == "archiver":
                lines.append(
                    f"archiver into Cassandra: {value['backlog_entries']} inbox entries drained "
                    f"at {value['entries_per_s']}/s; under {value['load_per_s']} msg/s of 1:1 "
                    f"load the lag peaked at {value['max_lag_entries']} entries and was gone "
                    f"{value['lag_gone_after_load_s']} s after the load"
                )
            else:
                lines.append(f"{name} {kind}: {value}")
    return "\n".join(lines)


SCENARIOS = "raw,one_to_one,fanout,idle,catchup,archiver"


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="jetchat-bench-"))
    try:
        async with Bench(root, args) as bench:
            chosen = set((args.only or SCENARIOS).split(","))
            plan: list[tuple[str, Callable[[], Awaitable[None]]]] = [("raw", bench.raw)]
            for target, pids in bench.targets():
                small, large = (20, 50) if args.quick else (100, 500)
                plan += [
                    ("one_to_one", partial(bench.one_to_one, target, pids)),
                    ("fanout", partial(bench.fanout, target, pids, small)),
                    ("fanout", partial(bench.fanout, target, pids, large)),
                    ("idle", partial(bench.idle, target, pids, args.idle)),
                ]
            plan += [
                ("catchup", lambda: bench.catchup(500 if args.quick else 10_000)),
                ("archiver", lambda: bench.archiver(args.archiver_rate)),
            ]
            for name, run in plan:
                if name in chosen:
                    progress(f"scenario {name}")
                    await run()
            return bench.results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--only", help=f"comma-separated, of: {SCENARIOS}")
    parser.add_argument("--pairs", type=int, default=20, help="1:1 sender/receiver pairs")
    parser.add_argument(
        "--rates",
        type=lambda s: [int(r) for r in s.split(",")],
        default=[500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 24000],
        help="1:1 rates to try, msg/s, comma-separated, rising",
    )
    parser.add_argument("--seconds", type=float, default=5, help="length of each 1:1 step")
    parser.add_argument(
        "--servers", type=int, default=1, help="jetchat processes (connections spread over them)"
    )
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--idle", type=int, default=10_000, help="idle WebSockets to open")
    parser.add_argument(
        "--archiver-rate", type=int, default=2000, help="1:1 load during the archiver scenario"
    )
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="skip Centrifugo")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.idle = min(args.pairs, 4), min(args.idle, 50)
        args.archiver_rate = min(args.archiver_rate, 200)
    results = asyncio.run(main_async(args))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
