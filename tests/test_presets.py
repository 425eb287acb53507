"""The shipped device presets read what real devices publish: each runs a real agent against a real broker."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, agent_overrides
from edge_agent.agent import Agent, load_models
from edge_agent.config import AgentConfig, load_config

PRESETS = REPO / "deploy/presets"


@dataclass(frozen=True)
class Scored:
    """A device message the preset must turn into a verdict."""

    topic: str
    payload: str
    sensor: str
    values: dict[str, float]
    ts: Any = None  # the reading's own timestamp, echoed; None: the arrival time


@dataclass(frozen=True)
class Rejected:
    """A message on a subscribed topic that is not a usable reading: counted and reported."""

    topic: str
    payload: str
    reason: str


@dataclass(frozen=True)
class Device:
    scored: list[Scored]
    rejected: list[Rejected] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # same device, topics not subscribed


def js(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


ZIGBEE2MQTT = Device(
    scored=[
        Scored("zigbee2mqtt/living-room", js({"battery": 97, "humidity": 48.21, "linkquality": 134, "pressure": 1012.3,
                                              "temperature": 21.45, "voltage": 2995, "last_seen": "2025-11-27T12:00:00+01:00"}),
               "living-room", {"temperature": 21.45}, "2025-11-27T12:00:00+01:00"),
        Scored("zigbee2mqtt/bedroom", js({"humidity": 51, "linkquality": 90, "temperature": 20.8}), "bedroom", {"temperature": 20.8}),
    ],
    rejected=[Rejected("zigbee2mqtt/kitchen-plug", js({"state": "ON", "power": 12, "linkquality": 80}), "missing_field")],
    ignored=[("zigbee2mqtt/bridge/state", js({"state": "online"})), ("zigbee2mqtt/living-room/availability", js({"state": "online"}))],
)

TASMOTA_ENERGY = {"TotalStartTime": "2025-01-01T00:00:00", "Total": 12.345, "Yesterday": 0.512, "Today": 0.101, "Period": 2,
                  "Power": 1040, "ApparentPower": 1100, "ReactivePower": 350, "Factor": 0.95, "Voltage": 231, "Current": 4.52}
TASMOTA = Device(
    scored=[Scored("tele/pump-plug/SENSOR", js({"Time": "2025-11-27T12:00:00", "ENERGY": TASMOTA_ENERGY}),
                   "pump-plug", {"ENERGY.Current": 4.52}, "2025-11-27T12:00:00")],
    rejected=[Rejected("tele/probe-1/SENSOR", js({"Time": "2025-11-27T12:00:05", "DS18B20": {"Id": "01144D2D6EAA", "Temperature": 21.4},
                                                  "TempUnit": "C"}), "missing_field")],
    ignored=[("tele/pump-plug/LWT", "Online"),
             ("tele/pump-plug/STATE", js({"Time": "2025-11-27T12:00:00", "Uptime": "0T01:02:03", "POWER": "ON", "Wifi": {"RSSI": 76}}))],
)

SHELLY_ID = "shellyplusht-c049ef8b3a44"
SHELLY_STATUS = Device(
    scored=[Scored(f"{SHELLY_ID}/status/temperature:0", js({"id": 0, "tC": 21.6, "tF": 70.9}), SHELLY_ID, {"tC": 21.6})],
    ignored=[(f"{SHELLY_ID}/status/humidity:0", js({"id": 0, "rh": 48.2})),
             (f"{SHELLY_ID}/status/sys", js({"mac": "C049EF8B3A44", "uptime": 12, "ram_free": 150000})),
             (f"{SHELLY_ID}/online", "true")],
)
SHELLY_RPC = Device(
    scored=[Scored(f"{SHELLY_ID}/events/rpc",
                   js({"src": SHELLY_ID, "dst": f"{SHELLY_ID}/events", "method": "NotifyStatus",
                       "params": {"ts": 1764241234.56, "temperature:0": {"id": 0, "tC": 21.6, "tF": 70.9}}}),
                   SHELLY_ID, {"params.temperature:0.tC": 21.6}, 1764241234.56)],
    rejected=[
        Rejected(f"{SHELLY_ID}/events/rpc", js({"src": SHELLY_ID, "dst": f"{SHELLY_ID}/events", "method": "NotifyStatus",
                                                "params": {"ts": 1764241240.1, "wifi": {"rssi": -61}}}), "missing_field"),
        Rejected(f"{SHELLY_ID}/events/rpc", js({"src": SHELLY_ID, "dst": f"{SHELLY_ID}/events", "method": "NotifyEvent",
                                                "params": {"ts": 1764241241.0, "events": [{"component": "sys", "event": "scheduled_restart"}]}}),
                 "missing_field"),
    ],
)

PLAIN = Device(
    scored=[
        Scored("pump-1/sensor/vibration_rms/state", "0.93", "pump-1", {"value": 0.93}),
        Scored("pump-2/sensor/vibration_rms/state", "0.95", "pump-2", {"value": 0.95}),
    ],
    rejected=[Rejected("pump-1/sensor/vibration_rms/state", "nan", "not_finite")],
    ignored=[("pump-1/status", "online"), ("pump-1/sensor/temperature/state", "38.2")],
)

CASES = {
    "zigbee2mqtt.yaml": ZIGBEE2MQTT,
    "tasmota.yaml": TASMOTA,
    "shelly-gen2.yaml": SHELLY_STATUS,
    "plain-number.yaml": PLAIN,
}


def commented_alternatives(path: Path) -> list[dict[str, Any]]:
    """The alternative sources a preset documents in comments: ``# - topic: ...`` and its ``#   key:`` lines."""
    blocks: list[list[str]] = []
    open_block = False
    for line in path.read_text().splitlines():
        text = line.strip()
        if re.match(r"#\s*- topic:", text):
            blocks.append([text[1:].strip()])
            open_block = True
        elif open_block and re.match(r"#\s{3,}\w+:", text):
            blocks[-1].append("  " + text[1:].strip())
        else:
            open_block = False
    return [yaml.safe_load("\n".join(block))[0] for block in blocks]


def preset_config(broker: Any, models_dir: Path, path: Path, *overrides: str) -> AgentConfig:
    """The preset as an agent runs it, scoring with the test's model (the shipped ones are checked apart)."""
    return load_config(path, [
        *agent_overrides(broker, models_dir, prefix="preset"),
        f"models.assign={js({'*': 'default'})}",
        *overrides,
    ], {})


@pytest.fixture
def run_agent(broker: Any) -> Any:
    agents: list[Agent] = []

    def start(cfg: AgentConfig) -> Agent:
        agent = Agent(cfg, load_models(cfg), env={})
        agent.start()
        agents.append(agent)
        deadline = time.monotonic() + 10
        while not agent.readiness()[0]:
            assert time.monotonic() < deadline, agent.readiness()[1]
            time.sleep(0.02)
        return agent

    yield start
    for agent in agents:
        agent.stop(timeout=5)


def check_device(agent: Agent, device: Device, collect: Any, sensor: Any) -> None:
    aid = agent.cfg.agent_id
    out = collect([f"edge/{aid}/#"])
    sent_at = time.time()
    for topic, payload in device.ignored:
        sensor.send(topic, payload)
    for message in [*device.scored, *device.rejected]:
        sensor.send(message.topic, message.payload)
    verdicts = [json.loads(m.payload) for m in out.wait_count(f"edge/{aid}/verdicts/", len(device.scored))]
    errors = [json.loads(m.payload) for m in out.wait_count(f"edge/{aid}/errors", len(device.rejected))]
    time.sleep(0.3)  # nothing more arrives: ignored topics were never subscribed, nothing is scored twice
    assert len(out.json(f"edge/{aid}/verdicts/")) == len(device.scored)
    assert len(out.json(f"edge/{aid}/errors")) == len(device.rejected)

    for expected, verdict in zip(device.scored, verdicts):
        assert verdict["sensor_id"] == expected.sensor
        got = {"value": verdict["value"]} if "value" in verdict else verdict["values"]
        assert got == expected.values
        assert 0.0 <= verdict["score"] <= 1.0 and verdict["anomaly"] in (0, 1)
        if expected.ts is None:
            assert abs(verdict["ts"] - sent_at) < 10
        else:
            assert verdict["ts"] == expected.ts
    assert [(e["topic"], e["reason"]) for e in errors] == [(r.topic, r.reason) for r in device.rejected]


@pytest.mark.broker
@pytest.mark.parametrize("preset", sorted(CASES))
def test_preset_reads_the_devices_real_payloads(
    preset: str, broker: Any, models_dir: Path, run_agent: Any, collect: Any, sensor: Any
) -> None:
    agent = run_agent(preset_config(broker, models_dir, PRESETS / preset))
    check_device(agent, CASES[preset], collect, sensor)


@pytest.mark.broker
def test_shelly_rpc_notifications_alternative(broker: Any, models_dir: Path, run_agent: Any, collect: Any, sensor: Any) -> None:
    [rpc] = [alt for alt in commented_alternatives(PRESETS / "shelly-gen2.yaml") if alt["topic"].endswith("/events/rpc")]
    agent = run_agent(preset_config(broker, models_dir, PRESETS / "shelly-gen2.yaml", f"sources=[{js(rpc)}]"))
    check_device(agent, SHELLY_RPC, collect, sensor)


def test_every_preset_is_tested_and_its_documented_alternatives_are_valid_config() -> None:
    assert {p.name for p in PRESETS.glob("*.yaml")} == set(CASES)
    for path in PRESETS.glob("*.yaml"):
        assert "Use it:" in path.read_text(), f"{path.name}: say how to use it"
        for alternative in commented_alternatives(path):
            cfg = load_config(path, [f"sources=[{js(alternative)}]", f"models.dir={REPO / 'models'}"], {})
            assert cfg.sources[0].topic == alternative["topic"]
    alternatives = [a["topic"] for p in PRESETS.glob("*.yaml") for a in commented_alternatives(p)]
    # The models a preset assigns are the ones the repository ships (and the image carries).
    for path in PRESETS.glob("*.yaml"):
        cfg = load_config(path, [], {})
        for model in {cfg.models.default, *cfg.models.assign.values()} - {None}:
            assert (REPO / "models" / str(model) / "manifest.json").is_file(), (path.name, model)
    assert "{sensor}/events/rpc" in alternatives and "tele/{sensor}/SENSOR" in alternatives
