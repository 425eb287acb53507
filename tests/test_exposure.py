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


def test_a_sensors_series_count_every_reading_keep_the_latest_gauges_and_go_with_its_eviction() -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    value = registry.get_sample_value
    metrics.record_verdicts([
        Verdict("pump", {"value": 1.0}, 0, 0.9, 1, "m", "1", event="onset"),
        Verdict("pump", {"value": 1.0}, 1, 0.8, 1, "m", "1"),
        Verdict("pump", {"value": 1.0}, 1, 0.8, 1, "m", "1", duplicate=True),  # counted as a duplicate only
        Verdict("pump", {"value": 1.0}, 2, 0.2, 0, "m", "1", event="end"),
        Verdict("fan", {"value": 1.0}, 0, 0.1, 0, "m", "1", learning=True),
        Verdict("valve", {"value": 1.0}, 0, 0.4, 1, "m", "1", event="repeat"),  # an episode no worse than one before
    ])
    pump, fan, valve = {"sensor": "pump"}, {"sensor": "fan"}, {"sensor": "valve"}
    assert value("edge_agent_readings_total", pump) == 3 and value("edge_agent_anomalies_total", pump) == 2
    assert value("edge_agent_anomaly_episodes_total", pump) == 1 and value("edge_agent_anomaly_episodes_ended_total", pump) == 1
    assert value("edge_agent_new_normals_total", pump) == 0 and value("edge_agent_duplicate_readings_total") == 1
    assert value("edge_agent_repeat_episodes_total", valve) == 1 and value("edge_agent_anomaly_episodes_total", valve) == 0
    assert value("edge_agent_repeat_episodes_total", pump) == 0 and value("edge_agent_anomalies_total", valve) == 1
    assert value("edge_agent_score", pump) == 0.2 and value("anomaly_score", pump) == 0 and value("edge_agent_learning", pump) == 0
    assert value("edge_agent_learning", fan) == 1
    assert (value("edge_agent_readings_created", pump) or 0) > 1.7e9  # counters carry their creation time, as before
    metrics.record_evicted(["pump", "fan"], tracked=lambda sensor: sensor == "fan")  # fan came back meanwhile
    assert value("edge_agent_readings_total", pump) is None and value("edge_agent_score", pump) is None
    assert value("edge_agent_readings_total", fan) == 1 and value("edge_agent_sensors_evicted_total") == 2
    text = generate_latest(registry).decode()
    assert "# TYPE edge_agent_readings_total counter" in text and "# TYPE edge_agent_score gauge" in text


def test_another_metric_of_a_per_sensor_name_is_refused() -> None:
    import pytest
    from prometheus_client import Counter

    registry = CollectorRegistry()
    AgentMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("edge_agent_readings", "Again.", ["sensor"], registry=registry)
