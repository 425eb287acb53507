"""What HTTP exposes, deliberately: /metrics behind the token when asked, per-sensor series bounded."""

from __future__ import annotations

import http.client

from prometheus_client import CollectorRegistry, generate_latest

from edge_agent.config import HTTPConfig
from edge_agent.core.domain import Verdict
from edge_agent.http.api import HttpApi
from edge_agent.metrics import AgentMetrics


def _get(address: tuple[str, int], path: str, token: str | None = None) -> int:
    conn = http.client.HTTPConnection(*address, timeout=5)
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    status = conn.getresponse().status
    conn.close()
    return status


def _never(values: object, sensor: object) -> Verdict:
    raise AssertionError("not called")


def test_metrics_require_the_token_when_told_and_probes_stay_open() -> None:
    api = HttpApi(HTTPConfig(host="127.0.0.1", port=0, metrics_token=True), _never, lambda: (True, ""),
                  CollectorRegistry(), token="s3cret")
    address = api.start()
    try:
        assert _get(address, "/metrics") == 401
        assert _get(address, "/metrics", "wrong") == 401
        assert _get(address, "/metrics", "s3cret") == 200
        assert _get(address, "/healthz") == 200 and _get(address, "/readyz") == 200
    finally:
        api.stop()


def test_metrics_stay_open_by_default() -> None:
    api = HttpApi(HTTPConfig(host="127.0.0.1", port=0), _never, lambda: (True, ""), CollectorRegistry(), token="s3cret")
    address = api.start()
    try:
        assert _get(address, "/metrics") == 200
    finally:
        api.stop()


def test_sensors_beyond_the_bound_are_counted_together_not_given_series() -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry, sensor_series=3)
    metrics.record_verdicts([Verdict(f"s{i}", {"value": 1.0}, 0, 0.9, int(i == 7), "m", "1", event="onset" if i == 7 else None) for i in range(10)])
    metrics.record_verdicts([Verdict("s1", {"value": 1.0}, 0, 0.1, 0, "m", "1")])
    text = generate_latest(registry).decode()
    assert {f'edge_agent_readings_total{{sensor="s{i}"}}' in text for i in range(3, 10)} == {False}
    assert registry.get_sample_value("edge_agent_readings_total", {"sensor": "s1"}) == 2
    assert registry.get_sample_value("edge_agent_readings_total", {"sensor": "_other"}) == 7
    assert registry.get_sample_value("edge_agent_anomalies_total", {"sensor": "_other"}) == 1
    assert registry.get_sample_value("edge_agent_anomaly_episodes_total", {"sensor": "_other"}) == 1
    assert registry.get_sample_value("edge_agent_score", {"sensor": "_other"}) is None
