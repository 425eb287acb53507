"""Prometheus: the shipped config and alert rules pass promtool, the alerts fire when they should
(promtool's rule unit tests), and a real Prometheus server scrapes a running agent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.kit import free_port
from conftest import REPO, send_normal_then_spike

RULES = REPO / "deploy/prometheus/rules.yml"
CONFIG = REPO / "deploy/prometheus/prometheus.yml"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
# Skipped on a developer machine without Debian's prometheus package; in CI (.ci/run installs
# it, CI=true) a missing binary fails instead of hiding a broken install step.
IN_CI = bool(os.environ.get("CI"))
needs_promtool = pytest.mark.skipif(PROMTOOL is None and not IN_CI, reason="promtool missing: .ci/run installs Debian's prometheus")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None and not IN_CI, reason="prometheus missing: .ci/run installs Debian's prometheus")

EXPECTED_ALERTS = {
    "EdgeAgentDown", "EdgeAgentBrokerDisconnected", "EdgeAgentModelNotLoaded", "EdgeAgentSensorsWithoutModel",
    "EdgeAgentAnomalyRateHigh", "EdgeAgentInvalidMessages", "EdgeAgentVerdictsDropped",
    "EdgeAgentPartitionLagGrowing", "EdgeAgentPartitionUnowned", "EdgeAgentPartitionRepins",
}


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


# --------------------------------------------------------------------------- static checks


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_accepts_the_config_and_its_rule_files() -> None:
    result = promtool("check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    # check config also checks the rule files it names: the rules are really wired in.
    assert "rules.yml" in result.stdout and f"{len(rules())} rules found" in result.stdout


def test_rules_cover_the_alerts_an_operator_needs_and_are_documented() -> None:
    found = {rule["alert"] for rule in rules()}
    assert found == EXPECTED_ALERTS
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert 'job="edge-agent"' in rule["expr"], f"{rule['alert']}: select the edge-agent job, not every target"


def test_compose_mounts_each_rule_file_beside_the_config() -> None:
    prom_cfg = yaml.safe_load(CONFIG.read_text())
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    volumes = [str(v) for v in compose["services"]["prometheus"]["volumes"]]
    mounted = {v.split(":")[1]: (REPO / v.split(":")[0]).resolve() for v in volumes if v.startswith("./")}
    config_dir = Path(next(target for target in mounted if target.endswith("/prometheus.yml"))).parent
    assert prom_cfg["rule_files"]
    for name in prom_cfg["rule_files"]:
        target = str(config_dir / name)
        assert target in mounted, f"{name} is not mounted at {target}"
        assert mounted[target] == (CONFIG.parent / name).resolve()


# --------------------------------------------------------------------------- rule unit tests


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ", ".join(f'{k}="{v}"' for k, v in {"job": "edge-agent", **labels}.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _alert(name: str, at: str, *fired: dict[str, str]) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [{"exp_labels": {"job": "edge-agent", **labels}} for labels in fired],
    }


A = {"instance": "a:8000"}
B = {"instance": "b:8000"}
DAY = 1440  # minutes


def rule_unit_tests() -> list[dict[str, Any]]:
    """Each alert fires on the agent that misbehaves (a) and not on the healthy one (b)."""
    crit, warn = {"severity": "critical"}, {"severity": "warning"}
    return [
        {
            "interval": "1m",
            "input_series": [
                _series("up", A, "0x10"),
                _series("up", B, "1x10"),
                _series("edge_agent_broker_connected", A, "0x10"),
                _series("edge_agent_broker_connected", B, "0 0 1x8"),  # reconnected after 2 minutes
            ],
            "alert_rule_test": [
                _alert("EdgeAgentDown", "2m", {**A, **crit}),
                _alert("EdgeAgentBrokerDisconnected", "1m"),  # not for long enough yet
                _alert("EdgeAgentBrokerDisconnected", "5m", {**A, **crit}),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                _series("up", A, "1x10"),
                _series("up", B, "1x10"),
                _series("edge_agent_model_info", {**A, "model": "default", "version": "1", "sha256": "ab"}, "1x10"),
                _series("edge_agent_invalid_messages_total", {**B, "reason": "no_model"}, "0+5x20"),
                _series("edge_agent_invalid_messages_total", {**A, "reason": "bad_json"}, "0+5x20"),
            ],
            "alert_rule_test": [
                _alert("EdgeAgentModelNotLoaded", "5m", {**B, **crit}),
                _alert("EdgeAgentSensorsWithoutModel", "15m", {**B, **warn}),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                # a: 10 of 60 readings a minute rejected (14 %); b: 1 of 60 (1.6 %).
                _series("edge_agent_invalid_messages_total", {**A, "reason": "bad_json"}, "0+10x40"),
                _series("edge_agent_readings_total", {**A, "sensor": "s1"}, "0+60x40"),
                _series("edge_agent_invalid_messages_total", {**B, "reason": "bad_json"}, "0+1x40"),
                _series("edge_agent_readings_total", {**B, "sensor": "s1"}, "0+60x40"),
                _series("edge_agent_verdicts_dropped_total", A, "0x5 10x20"),
                _series("edge_agent_verdicts_dropped_total", B, "0x25"),
            ],
            "alert_rule_test": [
                _alert("EdgeAgentInvalidMessages", "30m", {**A, **warn}),
                _alert("EdgeAgentVerdictsDropped", "8m", {**A, **warn}),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                # s1: quiet for a day, then 10 of 60 readings a minute anomalous.
                _series("edge_agent_readings_total", {**A, "sensor": "s1"}, f"0+60x{DAY + 60}"),
                _series("edge_agent_anomalies_total", {**A, "sensor": "s1"}, f"0x{DAY} 0+10x60"),
                # s2: 4 of 60 all day long: over 5 %, but that is its normal.
                _series("edge_agent_readings_total", {**A, "sensor": "s2"}, f"0+60x{DAY + 60}"),
                _series("edge_agent_anomalies_total", {**A, "sensor": "s2"}, f"0+4x{DAY + 60}"),
            ],
            "alert_rule_test": [
                _alert("EdgeAgentAnomalyRateHigh", f"{DAY - 10}m"),
                _alert("EdgeAgentAnomalyRateHigh", f"{DAY + 30}m", {**A, "sensor": "s1", **warn}),
            ],
        },
        {
            # A group of two members over 6 partitions: b holds 0, 1, 2 and 5, a holds 3 and 4.
            "interval": "1m",
            "input_series": [
                # Partition 0 grows by 200 readings a minute; 1 holds a large but shrinking
                # backlog; 2 a small steady one.
                _series("edge_agent_partition_pending", {**B, "partition": "0"}, "0+200x40"),
                _series("edge_agent_partition_pending", {**B, "partition": "1"}, "9000-100x40"),
                _series("edge_agent_partition_pending", {**B, "partition": "2"}, "50x40"),
                _series("edge_agent_partition_pending", {**B, "partition": "5"}, "0x40"),
                # a dies at minute 20 (its series end) and no one takes 3 and 4 over.
                _series("edge_agent_partition_pending", {**A, "partition": "3"}, "0x20"),
                _series("edge_agent_partition_pending", {**A, "partition": "4"}, "0x20"),
                _series("edge_agent_partitions_owned", A, "2x20"),
                _series("edge_agent_partitions_owned", B, "4x40"),
                # b is re-pinned 5 times in 5 minutes with no partition taken; a once, with its take.
                _series("edge_agent_partition_pins_total", B, "4x10 4+1x5 9x25"),
                _series("edge_agent_partition_takes_total", B, "4x40"),
                _series("edge_agent_partition_pins_total", A, "2x10 3x10"),
                _series("edge_agent_partition_takes_total", A, "2x10 3x10"),
            ],
            "alert_rule_test": [
                _alert("EdgeAgentPartitionLagGrowing", "12m"),  # over 1000 since minute 6, not for 10 minutes yet
                _alert("EdgeAgentPartitionLagGrowing", "20m", {"partition": "0", **warn}),
                _alert("EdgeAgentPartitionUnowned", "18m"),  # all 6 owned
                _alert("EdgeAgentPartitionUnowned", "24m"),  # a's series are still within the lookback
                _alert("EdgeAgentPartitionUnowned", "35m", {"severity": "critical"}),
                _alert("EdgeAgentPartitionRepins", "9m"),
                _alert("EdgeAgentPartitionRepins", "16m", {**B, **warn}),
            ],
        },
    ]


@needs_promtool
def test_alerts_fire_on_the_misbehaving_agent_only(tmp_path: Path) -> None:
    # promtool compares annotations too; their templates are checked by `check rules`, so the
    # unit tests run on a copy without them and compare alert names and labels.
    data = yaml.safe_load(RULES.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(data))
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": rule_unit_tests()}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {case["alertname"] for test in rule_unit_tests() for case in test["alert_rule_test"]}
    assert tested == EXPECTED_ALERTS


# --------------------------------------------------------------------------- a real Prometheus


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _wait(what: str, probe: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, urllib.error.URLError, ValueError, KeyError, IndexError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen in {timeout} s; last: {last!r}")


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """Start a Prometheus server on a free loopback port scraping the given target every second."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> str:
        assert PROMETHEUS is not None
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "edge-agent", "static_configs": [{"targets": [target]}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=log,
        ))
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert procs[-1].poll() is None, (tmp_path / "prometheus.log").read_text()
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                return response.status == 200

        _wait("Prometheus ready", ready)
        return url

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = _get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


@needs_prometheus
@pytest.mark.broker
def test_real_prometheus_scrapes_the_agent_and_sees_its_anomalies(start_agent, collect, sensor, prometheus) -> None:
    agent = start_agent()
    aid = agent.cfg.agent_id
    out = collect([f"edge/{aid}/#"])
    send_normal_then_spike(sensor, "sensors/pump")
    sensor.send("sensors/pump", b"{broken")
    out.wait_count(f"edge/{aid}/alerts/", 1)
    out.wait_count(f"edge/{aid}/verdicts/", 31)

    host, port = agent.http_address
    url = prometheus(f"{host}:{port}")

    def target_up() -> dict[str, Any] | None:
        targets = _get(f"{url}/api/v1/targets")["data"]["activeTargets"]
        return next((t for t in targets if t["health"] == "up"), None)

    target = _wait("the agent's target up", target_up)
    assert target["labels"]["job"] == "edge-agent" and target["scrapeUrl"] == f"http://{host}:{port}/metrics"

    anomalies = _wait("edge_agent_anomalies_total", lambda: _query(url, 'edge_agent_anomalies_total{sensor="pump"}'))
    assert float(anomalies[0]["value"][1]) == 1.0
    assert float(_query(url, 'edge_agent_readings_total{sensor="pump"}')[0]["value"][1]) == 31.0
    assert float(_query(url, 'anomaly_score{sensor="pump"}')[0]["value"][1]) == 1.0
    assert 0.5 <= float(_query(url, 'edge_agent_score{sensor="pump"}')[0]["value"][1]) <= 1.0
    assert float(_query(url, 'edge_agent_invalid_messages_total{reason="bad_json"}')[0]["value"][1]) == 1.0
    assert float(_query(url, "edge_agent_broker_connected")[0]["value"][1]) == 1.0
    assert float(_query(url, 'up{job="edge-agent"}')[0]["value"][1]) == 1.0

    def rules_evaluated() -> list[dict[str, Any]]:
        groups = _get(f"{url}/api/v1/rules")["data"]["groups"]
        loaded = [rule for group in groups for rule in group["rules"]]
        return loaded if loaded and all(rule.get("lastEvaluation", "").startswith("2") for rule in loaded) else []

    loaded = {rule["name"]: rule for rule in _wait("the alert rules evaluated", rules_evaluated)}
    assert set(loaded) == EXPECTED_ALERTS
    for name, rule in loaded.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
    # A healthy agent with its model loaded raises none of the availability alerts: the
    # expressions join on the labels the real agent and Prometheus produce.
    for name in ("EdgeAgentDown", "EdgeAgentBrokerDisconnected", "EdgeAgentModelNotLoaded"):
        assert loaded[name]["state"] == "inactive", (name, loaded[name]["alerts"])
