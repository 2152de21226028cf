"""The benchmark runs end to end at tiny sizes, so it does not rot (no timing is asserted);
so does its Centrifugo peer."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.centrifugo import CentrifugoClient, CentrifugoServer, centrifugo_binary, token
from embedded import EmbeddedServerError

ROOT = Path(__file__).resolve().parents[2]


def run_bench(module: str, out: Path, *args: str) -> tuple[dict, str]:
    """``python -m <module> <args> --json <out>``: its results and what it printed."""
    run = subprocess.run(
        [sys.executable, "-m", module, *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text()), run.stdout


def test_benchmark_smoke_run(tmp_path):
    results, stdout = run_bench("bench.run", tmp_path / "bench.json", "--quick")
    scenarios = {"one_to_one", "fanout_20", "fanout_50", "idle_ws", "idle_poll", "catchup"}
    assert {"raw_nats_py", "archiver", *scenarios} <= set(results)
    for name in scenarios:
        assert "jetchat" in results[name], name
    for name in {"one_to_one", "fanout_20", "idle_ws"} if not _centrifugo_missing() else ():
        assert "centrifugo" in results[name], name
    assert results["one_to_one"]["jetchat"]["steps"]
    assert results["catchup"]["jetchat"]["drained_per_s"] > 0
    assert results["archiver"]["jetchat"]["entries_per_s"] > 0
    assert "1:1 jetchat" in stdout


def _centrifugo_missing() -> bool:
    try:
        centrifugo_binary()
    except EmbeddedServerError:
        return True
    return False


@pytest.mark.skipif(
    _centrifugo_missing(),
    reason="no centrifugo in .tools/bin nor on PATH (ops/centrifugo fetch installs it)",
)
async def test_centrifugo_peer_delivers_one_to_one_and_fanout(tmp_path):
    """The benchmark's Centrifugo peer: a real server, a publish into another user's channel,
    and a 20-subscriber fan-out."""
    server = CentrifugoServer(tmp_path).start()
    clients: list[CentrifugoClient] = []

    async def client(user: str) -> CentrifugoClient:
        c = CentrifugoClient(server.ws_url, token(server.secret, user))
        await c.connect()
        clients.append(c)
        return c

    try:
        a, b = await client("a"), await client("b")
        got: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()
        a.on_publication = lambda channel, data: got.put_nowait((channel, data))
        await a.subscribe("personal.a")
        await b.publish("personal.a", {"text": "hi a", "n": 1})  # b is not subscribed
        assert await asyncio.wait_for(got.get(), 10) == ("personal.a", {"text": "hi a", "n": 1})

        members = [await client(f"m{i}") for i in range(20)]
        received: dict[str, asyncio.Future[dict]] = {}
        for m in members:
            fut = received[m.token] = asyncio.get_running_loop().create_future()
            m.on_publication = lambda _ch, data, fut=fut: fut.done() or fut.set_result(data)
            await m.subscribe("group.g")
        await b.publish("group.g", {"text": "hi all"})
        results = await asyncio.wait_for(asyncio.gather(*received.values()), 10)
        assert results == [{"text": "hi all"}] * 20
    finally:
        for c in clients:
            await c.close()
        server.stop()
    assert not server.running


def test_idle_memory_benchmark_smoke_run(tmp_path):
    results, _ = run_bench("bench.idle", tmp_path / "idle.json", "--ws", "150", "--polls", "150")
    for name in ("idle_ws", "pending_polls"):  # no figure is asserted at this size
        assert results[name]["connections"] == 150
        assert {"rss_mb_before", "rss_mb_with", "kb_per_connection"} <= set(results[name])
