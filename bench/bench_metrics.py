"""What the per-sensor /metrics series cost: a new sensor's first verdict, a known sensor's, an eviction, a render.

The agent keeps a sensor's counters and gauges as plain numbers and renders them when scraped
(``edge_agent.metrics.SensorSeries``); prometheus_client's own labelled children, which it used
before, are timed on the same verdicts in the same run for comparison.

Usage: python -m bench.bench_metrics [--sensors 5000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from edge_agent.core.domain import Verdict
from edge_agent.metrics import SENSOR_COUNTERS, SENSOR_GAUGES, AgentMetrics


def per_item(action: Callable[[], object], items: int) -> float:
    """Microseconds an item that ``action`` takes for ``items`` items."""
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) / items * 1e6


class LabelledChildren:
    """The same series as prometheus_client's labelled Counter and Gauge children (the agent's way before SensorSeries)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counters = [Counter(name, doc, ["sensor"], registry=registry) for name, doc in SENSOR_COUNTERS]
        self.gauges = [Gauge(name, doc, ["sensor"], registry=registry) for name, doc in SENSOR_GAUGES]
        self.children: dict[str, tuple[list[Counter], list[Gauge]]] = {}

    def record_verdicts(self, verdicts: Sequence[Verdict]) -> None:
        for v in verdicts:
            found = self.children.get(v.sensor_id)
            if found is None:
                found = self.children[v.sensor_id] = ([c.labels(v.sensor_id) for c in self.counters],
                                                      [g.labels(v.sensor_id) for g in self.gauges])
            counters, gauges = found
            counters[0].inc()
            gauges[1].set(v.score)

    def record_evicted(self, sensors: Sequence[str]) -> None:
        for sensor in sensors:
            self.children.pop(sensor, None)
            for metric in (*self.counters, *self.gauges):
                metric.remove(sensor)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensors", type=int, default=5000)
    n = parser.parse_args().sensors
    verdicts = [Verdict(f"sensor-{i}", {"value": 1.0}, 0, 0.1, 0, "m", "1") for i in range(n)]
    names = [v.sensor_id for v in verdicts]
    print(f"{n} sensors, one verdict each, then a second each, a render of /metrics, then all evicted\n")
    print("| series kept as | first verdict of a new sensor | a known sensor's verdict | render, all sensors | eviction of a sensor |")
    print("|---|---:|---:|---:|---:|")
    ours_registry = CollectorRegistry()
    ours = AgentMetrics(ours_registry, sensor_series=n)
    theirs_registry = CollectorRegistry()
    theirs = LabelledChildren(theirs_registry)
    for label, registry, record, evict in (
        ("plain numbers (edge_agent.metrics.SensorSeries)", ours_registry, ours.record_verdicts,
         lambda: ours.record_evicted(names, tracked=lambda sensor: False)),
        ("prometheus_client labelled children", theirs_registry, theirs.record_verdicts, lambda: theirs.record_evicted(names)),
    ):
        first = per_item(lambda: record(verdicts), n)  # noqa: B023 (called at once)
        known = per_item(lambda: record(verdicts), n)  # noqa: B023
        render_ms = per_item(lambda: generate_latest(registry), 1) / 1000  # noqa: B023
        evicted = per_item(evict, n)
        print(f"| {label} | {first:.1f} µs | {known:.1f} µs | {render_ms:.0f} ms | {evicted:.1f} µs |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
