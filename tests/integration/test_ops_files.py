"""The alerting rules and the Grafana dashboard in ops/ name only metrics that a running server
exports, so neither can silently watch a metric that was renamed or removed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml

OPS = Path(__file__).resolve().parents[2] / "ops"
METRIC = re.compile(r"\bjetchat_[a-z_]+")
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def exprs_of_rules() -> list[str]:
    rules = yaml.safe_load((OPS / "prometheus" / "jetchat-alerts.yml").read_text())
    out = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule
            out.append(rule["expr"])
    return out


def exprs_of_dashboard() -> list[str]:
    dashboard = json.loads((OPS / "grafana" / "jetchat-dashboard.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def families(exposition: str) -> set[str]:
    """Metric family names a /metrics page declares (``# TYPE name kind``), with the names of
    their samples (counters' ``_total``, histograms' ``_bucket``)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "counter":
                names.add(name if name.endswith("_total") else f"{name}_total")
    return names


def test_every_metric_the_alerts_and_the_dashboard_name_is_exported(server):
    exported = families(httpx.get(f"{server.base_url}/metrics").text)
    rules, panels = exprs_of_rules(), exprs_of_dashboard()
    assert len(rules) >= 6 and len(panels) >= 10
    named = {HISTOGRAM_SERIES.sub("", m) for e in rules + panels for m in METRIC.findall(e)}
    assert named - exported == set()
    # what the issue asks the two to cover
    for needed in ("jetchat_archiver_lag_messages", "jetchat_worker_up", "jetchat_slow_consumers"):
        assert any(needed in e for e in rules), needed
    for needed in ("jetchat_connections", "jetchat_send_batch_seconds", "jetchat_worker_up"):
        assert any(needed in e for e in panels), needed
