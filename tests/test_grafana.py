"""The Grafana dashboard (and the alert rules) query only metrics and labels a live agent really exposes,
and the dashboard shows what an operator keeps it open for."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.kit import metrics_text
from conftest import REPO, send_normal_then_spike
from test_deploy import promql_metric_names

pytestmark = pytest.mark.broker

DASHBOARD = REPO / "deploy/grafana/dashboards/edge-agent.json"
RULES = REPO / "deploy/prometheus/rules.yml"
# Series Prometheus itself adds to every scrape; rules may use them, they are not the agent's.
PROMETHEUS_SERIES = {"up": {"job", "instance"}}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}


@dataclass(frozen=True)
class Exposed:
    """Sample names the agent exposes and the labels each carries."""

    labels: dict[str, set[str]]

    def knows(self, name: str) -> bool:
        return name in self.labels


def exposed(text: str) -> Exposed:
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        # A family whose labelled children do not exist yet still exposes its names.
        names = [family.name + s for s in SUFFIXES.get(family.type, ("",))]
        for name in names:
            labels.setdefault(name, set())
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return Exposed(labels)


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panels() -> list[dict[str, Any]]:
    return [p for panel in dashboard()["panels"] for p in [panel, *panel.get("panels", [])] if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, template variable and alert rule."""
    found = [(f"panel {p['title']!r}", str(t["expr"])) for p in panels() for t in p.get("targets", [])]
    for var in dashboard().get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        values = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", text)
        if values:
            found.append((f"variable {var['name']!r}", f"sum by ({values.group(2)}) ({values.group(1)})"))
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        found.extend((f"alert {r['alert']!r}", str(r["expr"])) for r in group["rules"])
    return found


def label_names(expr: str) -> set[str]:
    """Label names a query groups, joins or filters by."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    names: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        names.update(n.strip() for n in group.split(",") if n.strip())
    for selector in re.findall(r"\{([^}]*)\}", text):
        names.update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
    return names


@pytest.fixture
def live(start_agent: Any, collect: Any, sensor: Any) -> Exposed:
    """What a running agent exposes after normal readings, an anomaly and a rejected message."""
    agent = start_agent()
    aid = agent.cfg.agent_id
    out = collect([f"edge/{aid}/#"])
    send_normal_then_spike(sensor, "sensors/pump")
    sensor.send("sensors/pump", b"not json {")
    out.wait_count(f"edge/{aid}/alerts/", 1)
    out.wait_count(f"edge/{aid}/errors", 1)
    host, port = agent.http_address
    return exposed(metrics_text(port, host))


def test_exposition_reader_sees_names_and_labels() -> None:
    text = (
        "# HELP x_readings Readings.\n# TYPE x_readings counter\nx_readings_total{sensor=\"a\"} 1.0\n"
        "# HELP x_lat Latency.\n# TYPE x_lat histogram\n"
        "# HELP x_unused Never set.\n# TYPE x_unused counter\n"
    )
    seen = exposed(text)
    assert seen.labels["x_readings_total"] == {"sensor"}
    assert seen.knows("x_lat_bucket") and seen.knows("x_lat_count") and seen.knows("x_unused_total")
    assert not seen.knows("x_readings") and not seen.knows("x_lat")
    assert label_names('sum by (le, sensor) (rate(m{job="a", reason=~"b|c"}[5m])) unless on (instance) n') == {
        "le", "sensor", "job", "reason", "instance"}


@pytest.fixture
def live_member(broker: Any, models_dir: Path) -> Iterator[Exposed]:
    """What an agent of a NATS consumer group exposes once it holds its partitions."""
    from bench.nats_servers import NatsServer
    from test_jetstream import Member, group_overrides, wait_owned

    server = NatsServer()
    server.start()
    member = Member(group_overrides(broker, models_dir, server))
    try:
        wait_owned([member])
        # The partitions' lag is refreshed every heartbeat (member_ttl / 3).
        deadline = time.monotonic() + 10
        while "edge_agent_partition_pending{" not in metrics_text(member.http_port) and time.monotonic() < deadline:
            time.sleep(0.2)
        yield exposed(metrics_text(member.http_port))
    finally:
        member.kill()
        server.close()


def test_every_query_uses_metrics_and_labels_the_live_agent_exposes(live: Exposed, live_member: Exposed) -> None:
    """Each query against what a single agent exposes, or, for the group's, a group member."""
    checked = 0
    for where, expr in queries():
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        agent = live_member if any(n.startswith("edge_agent_partition") for n in names) else live
        unknown = {n for n in names if not agent.knows(n) and n not in PROMETHEUS_SERIES}
        assert not unknown, f"{where}: {sorted(unknown)} not exposed by the agent ({expr})"
        available = set(TARGET_LABELS)
        for name in names:
            available |= agent.labels.get(name, PROMETHEUS_SERIES.get(name, set()))
        missing = label_names(expr) - available
        assert not missing, f"{where}: labels {sorted(missing)} exist on none of {sorted(names)}"
        checked += 1
    assert checked >= len(panels())


def test_dashboard_shows_what_an_operator_watches(live: Exposed) -> None:
    by_title = {p["title"]: [str(t["expr"]) for t in p.get("targets", [])] for p in panels()}

    def panel_with(pattern: str) -> str:
        hits = [title for title, exprs in by_title.items() if any(re.search(pattern, e) for e in exprs)]
        assert hits, f"no panel queries /{pattern}/"
        return hits[0]

    watched = {
        "readings/s": r"rate\(edge_agent_readings_total",
        "anomaly rate per sensor": r"sum by \(sensor\) \(rate\(edge_agent_anomalies_total.*\)\) / sum by \(sensor\) \(rate\(edge_agent_readings_total",
        "latest scores": r"\bedge_agent_score\b",
        "alerts over time": r"sum by \(sensor\) \(increase\(edge_agent_anomalies_total",
        "scoring latency": r"histogram_quantile\(0\.99, .*edge_agent_scoring_latency_seconds_bucket",
        "broker connection": r"\bedge_agent_broker_connected\b",
        "model versions": r"by \([^)]*\bversion\b[^)]*\) \(edge_agent_model_info\)",
    }
    for pattern in watched.values():
        panel_with(pattern)
    # The models table shows the version label the live agent really sets.
    assert "version" in live.labels["edge_agent_model_info"]
