"""The benchmark runs end to end at tiny sizes, so it does not rot (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_smoke_run(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {"raw_nats_py", "one_to_one", "fanout_100", "catchup", "idle_ws"} <= set(results)
    assert results["one_to_one"]["steps"] and results["catchup"]["drained_per_s"] > 0
    assert "1:1 WebSocket" in run.stdout


def test_idle_memory_benchmark_smoke_run(tmp_path):
    out = tmp_path / "idle.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.idle", "--ws", "150", "--polls", "150", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    for name in ("idle_ws", "pending_polls"):  # no figure is asserted at this size
        assert results[name]["connections"] == 150
        assert {"rss_mb_before", "rss_mb_with", "kb_per_connection"} <= set(results[name])
