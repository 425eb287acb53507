"""Shared fixtures: a real broker per test, the kit's sensor and collectors on it (bench/kit.py), trained models."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.kit import Broker, Collector, Sensor, start_test_broker
from edge_agent.core.domain import InvalidReading, Verdict

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A broker of this test's own on a free port; the test may stop and restart it."""
    b = start_test_broker()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def collect(broker: Broker) -> Iterator[Callable[[list[str]], Collector]]:
    """Make collectors (the kit's) subscribed on the test's broker; closed at teardown."""
    made: list[Collector] = []

    def make(topics: list[str]) -> Collector:
        c = Collector(broker, topics)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def sensor(broker: Broker) -> Iterator[Sensor]:
    """A sensor (the kit's) on the test's broker: ``send`` waits for the broker's PUBACK."""
    with Sensor(broker, max_inflight=1000) as s:
        yield s


def verdicts_of(results: Iterable[Verdict | InvalidReading]) -> list[Verdict]:
    """The verdicts of a scoring call whose readings were all valid (a rejection fails the test, naming it)."""
    out = []
    for r in results:
        assert isinstance(r, Verdict), r
        out.append(r)
    return out


def skab_like_csv(path: Path, n: int, fault_from: int | None, seed: int) -> None:
    """A SKAB-shaped file: ';'-separated, datetime first, two sensors, anomaly and changepoint columns."""
    rng = np.random.default_rng(seed)
    lines = ["datetime;Pressure;Temperature;anomaly;changepoint"]
    for i in range(n):
        fault = fault_from is not None and i >= fault_from
        pressure = 1.0 + rng.normal(0, 0.02) + (0.5 if fault else 0.0)
        lines.append(f"2020-03-09 10:{i // 60 % 60:02d}:{i % 60:02d};{pressure:.4f};{70 + rng.normal(0, 0.1):.3f};{int(fault)};0")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def normal_csv(path: Path, n: int = 2000, seed: int = 1) -> Path:
    """Normal readings around 1.0 (like a vibration RMS): 0.95 is ordinary, 5.0 is not."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    values = 0.9 + 0.1 * np.sin(2 * np.pi * t / 500) + rng.normal(0, 0.03, n)
    lines = ["timestamp,value"] + [f"{1_700_000_000 + i},{v:.5f}" for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory with one univariate model 'default' and a two-field model 'climate'."""
    from edge_agent.model_files import save_model
    from edge_agent.tools.table import read_table
    from edge_agent.tools.training import train_model

    root = tmp_path_factory.mktemp("models")
    csv_path = normal_csv(root / "normal.csv")
    model, est = train_model(read_table(csv_path), name="default", version="t1")
    save_model(model, root / "default", est)

    rng = np.random.default_rng(2)
    n = 2000
    temp = 21 + rng.normal(0, 0.3, n)
    hum = 45 - 0.5 * (temp - 21) + rng.normal(0, 0.5, n)
    climate = root / "climate.csv"
    climate.write_text("temperature,humidity\n" + "\n".join(f"{a:.3f},{b:.3f}" for a, b in zip(temp, hum, strict=True)) + "\n")
    model, est = train_model(read_table(climate), name="climate", version="t1")
    save_model(model, root / "climate", est)
    return root


def agent_overrides(broker: Any, models_dir: Path, prefix: str = "test") -> list[str]:
    """An agent of its own on the test's broker: free HTTP port, fast reconnects, the test's models."""
    return [
        f"agent_id={prefix}-{uuid.uuid4().hex[:6]}",
        f"mqtt.host={broker.host}",
        f"mqtt.port={broker.port}",
        "mqtt.reconnect_min_delay=0.2",
        "mqtt.reconnect_max_delay=1",
        "http.host=127.0.0.1",
        "http.port=0",
        f"models.dir={models_dir}",
        "learning.enabled=false",  # every sensor is scored by the test's models at once (tests of learning turn it on)
        f"learning.state_dir={tempfile.mkdtemp(prefix='agent-state-')}",  # the session record goes there too
        # amqtt, the last-resort broker, speaks MQTT 3.1.1 only.
        *(["mqtt.protocol=3.1.1"] if getattr(broker, "kind", "") == "embedded" else []),
    ]


def agent_config(broker: Any, models_dir: Path, *overrides: str) -> Any:
    from edge_agent.config import load_config

    return load_config(None, [*agent_overrides(broker, models_dir), *overrides], {})


def send_normal_then_spike(sensor: Sensor, topic: str, normal: int = 30) -> None:
    """``normal`` ordinary readings around 0.9, then one at 7.5 that every model here flags."""
    for i in range(normal):
        sensor.send_json(topic, {"value": 0.9 + 0.01 * (i % 3), "ts": 1000 + i})
    sensor.send_json(topic, {"value": 7.5, "ts": 2000})


def started_agent(cfg: Any) -> Any:
    """An in-process agent with ``cfg``'s models, started and ready (the caller stops it)."""
    from edge_agent.agent import Agent, load_models

    agent = Agent(cfg, load_models(cfg), env={})
    agent.start()
    wait_until_ready(agent)
    return agent


def wait_until_ready(agent: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not agent.readiness()[0]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"agent not ready: {agent.readiness()[1]}")
        time.sleep(0.02)


@pytest.fixture
def start_agent(broker: Any, models_dir: Path) -> Iterator[Callable[..., Any]]:
    """Start in-process agents against the test's broker; stopped at teardown."""
    from edge_agent.agent import Agent, load_models

    agents: list[Any] = []

    def start(*overrides: str, wait_ready: bool = True) -> Any:
        cfg = agent_config(broker, models_dir, *overrides)
        agent = Agent(cfg, load_models(cfg), env={})
        agent.start()
        agents.append(agent)
        if wait_ready:
            wait_until_ready(agent)
        return agent

    yield start
    for a in agents:
        a.stop(timeout=5)


# The fault suite (tests/test_faults.py) puts its table rows here; printed after the run.
FAULT_TABLE = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(FAULT_TABLE, None)
    if rows:
        terminalreporter.write_sep("=", "fault scenarios (bench/faults.py prints the same table standalone)")
        for line in rows:
            terminalreporter.write_line(line)
