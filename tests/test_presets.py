"""The shipped device presets read what real devices publish: each runs a real agent against a real broker."""

from __future__ import annotations

import json
import re
import tempfile
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


ZIGBEE2MQTT = Device(  # a mixed fleet under one topic
    scored=[
        Scored("zigbee2mqtt/living-room", js({"battery": 97, "humidity": 48.21, "linkquality": 134, "pressure": 1012.3,
                                              "temperature": 21.45, "voltage": 2995, "last_seen": "2025-11-27T12:00:00+01:00"}),
               "living-room@temperature,humidity,pressure", {"temperature": 21.45, "humidity": 48.21, "pressure": 1012.3},
               "2025-11-27T12:00:00+01:00"),
        Scored("zigbee2mqtt/bedroom", js({"linkquality": 90, "temperature": 20.8}), "bedroom@temperature", {"temperature": 20.8}),
        Scored("zigbee2mqtt/kitchen-plug", js({"current": 0.06, "energy": 1.53, "linkquality": 80, "power": 13, "state": "ON",
                                               "voltage": 231, "last_seen": 1764241300000}),
               "kitchen-plug@power,current,energy_rate", {"power": 13.0, "current": 0.06, "energy_rate": 0.01 / 60}, 1764241300000),
    ],
    rejected=[
        # The plug's first message sets its energy counter's baseline; the one above is scored as a rate.
        Rejected("zigbee2mqtt/kitchen-plug", js({"current": 0.05, "energy": 1.52, "linkquality": 80, "power": 12, "state": "ON",
                                                 "voltage": 230, "last_seen": 1764241240000}), "rate_pending"),
        Rejected("zigbee2mqtt/hall-button", js({"action": "single", "battery": 100, "linkquality": 40}), "missing_field"),
    ],
    ignored=[("zigbee2mqtt/bridge/state", js({"state": "online"})), ("zigbee2mqtt/living-room/availability", js({"state": "online"}))],
)

TASMOTA_ENERGY = {"TotalStartTime": "2025-01-01T00:00:00", "Total": 12.345, "Yesterday": 0.512, "Today": 0.101, "Period": 2,
                  "Power": 1040, "ApparentPower": 1100, "ReactivePower": 350, "Factor": 0.95, "Voltage": 231, "Current": 4.52}
TASMOTA = Device(
    scored=[
        Scored("tele/probe-1/SENSOR", js({"Time": "2025-11-27T12:00:05", "DS18B20": {"Id": "01144D2D6EAA", "Temperature": 21.4},
                                          "TempUnit": "C"}), "probe-1-DS18B20@Temperature", {"Temperature": 21.4}, "2025-11-27T12:00:05"),
        # Several probes on one pin, Time with the offset (SetOption52 1): a sensor id each.
        Scored("tele/ds1820/SENSOR", js({"Time": "2025-11-27T13:00:05+01:00",
                                         "DS18B20-1": {"Id": "01144D2D6EAA", "Temperature": 21.4},
                                         "DS18B20-2": {"Id": "3C01D607A1B2", "Temperature": 19.1}, "TempUnit": "C"}),
               "ds1820-DS18B20-1@Temperature", {"Temperature": 21.4}, "2025-11-27T13:00:05+01:00"),
        Scored("tele/ds1820/SENSOR", "", "ds1820-DS18B20-2@Temperature", {"Temperature": 19.1}, "2025-11-27T13:00:05+01:00"),
        Scored("tele/pump-plug/SENSOR", js({"Time": "2025-11-27T12:05:00", "ENERGY": TASMOTA_ENERGY}),
               "pump-plug-ENERGY@Power,Current", {"Power": 1040.0, "Current": 4.52}, "2025-11-27T12:05:00"),
    ],
    rejected=[Rejected("tele/probe-1/SENSOR", js({"Time": "2025-11-27T12:00:05", "DS18B20": {"Id": "01144D2D6EAA"}, "TempUnit": "C"}),
                       "missing_field")],
    ignored=[("tele/pump-plug/LWT", "Online"),
             ("tele/pump-plug/STATE", js({"Time": "2025-11-27T12:00:00", "Uptime": "0T01:02:03", "POWER": "ON", "Wifi": {"RSSI": 76}}))],
)

SHELLY_ID = "shellyplus1pm-a8032ab1c2d3"
HT_ID = "shellyplusht-c049ef8b3a44"


def rpc(device: str, params: dict[str, Any], method: str = "NotifyStatus") -> str:
    return js({"src": device, "dst": f"{device}/events", "method": method, "params": params})


SHELLY = Device(
    scored=[
        Scored(f"{HT_ID}/events/rpc", rpc(HT_ID, {"ts": 1764241234.56, "temperature:0": {"id": 0, "tC": 21.6, "tF": 70.9},
                                                  "humidity:0": {"id": 0, "rh": 48.2}}),
               f"{HT_ID}-temperature:0@tC", {"tC": 21.6}, 1764241234.56),
        Scored(f"{HT_ID}/events/rpc", "", f"{HT_ID}-humidity:0@rh", {"rh": 48.2}, 1764241234.56),
        # The full status after connecting, then a partial update (only apower changed): merged and scored.
        Scored(f"{SHELLY_ID}/events/rpc", rpc(SHELLY_ID, {"ts": 1764241240.0, "switch:0": {
            "id": 0, "source": "init", "output": True, "apower": 12.5, "voltage": 230.1, "current": 0.06,
            "aenergy": {"total": 1234.5, "by_minute": [0, 0, 0], "minute_ts": 1764241200}, "temperature": {"tC": 41.2}}}),
               f"{SHELLY_ID}-switch:0@apower,voltage,current", {"apower": 12.5, "voltage": 230.1, "current": 0.06}, 1764241240.0),
        Scored(f"{SHELLY_ID}/events/rpc", rpc(SHELLY_ID, {"ts": 1764241300.0, "switch:0": {"id": 0, "apower": 14.5}}),
               f"{SHELLY_ID}-switch:0@apower,voltage,current", {"apower": 14.5, "voltage": 230.1, "current": 0.06}, 1764241300.0),
    ],
    ignored=[(f"{SHELLY_ID}/events/rpc", rpc(SHELLY_ID, {"ts": 1764241241.0, "wifi": {"rssi": -61}})),
             (f"{SHELLY_ID}/events/rpc", rpc(SHELLY_ID, {"ts": 1764241241.0, "events": [{"component": "sys", "event": "scheduled_restart"}]},
                                             "NotifyEvent")),
             (f"{SHELLY_ID}/online", "true"),
             (f"{HT_ID}/status/temperature:0", js({"id": 0, "tC": 21.6, "tF": 70.9}))],
)
SHELLY_STATUS = Device(
    scored=[Scored(f"{HT_ID}/status/temperature:0", js({"id": 0, "tC": 21.6, "tF": 70.9}), HT_ID, {"tC": 21.6})],
    ignored=[(f"{HT_ID}/status/humidity:0", js({"id": 0, "rh": 48.2})),
             (f"{HT_ID}/status/sys", js({"mac": "C049EF8B3A44", "uptime": 12, "ram_free": 150000})),
             (f"{HT_ID}/online", "true")],
)

ESPHOME = Device(
    scored=[
        Scored("pump-1/sensor/vibration_rms/state", "0.93", "pump-1.vibration_rms", {"value": 0.93}),
        Scored("pump-1/sensor/bearing_temperature/state", "38.2", "pump-1.bearing_temperature", {"value": 38.2}),
        Scored("pump-2/sensor/vibration_rms/state", "0.95", "pump-2.vibration_rms", {"value": 0.95}),
    ],
    rejected=[Rejected("pump-1/sensor/vibration_rms/state", "nan", "not_finite")],
    ignored=[("pump-1/status", "online"), ("pump-1/sensor/uptime/state", "3600"), ("pump-1/sensor/wifi_signal/state", "-61"),
             ("pump-1/binary_sensor/running/state", "ON")],
)

HOMEASSISTANT = Device(
    scored=[Scored("hass_states/sensor/living_room_temperature/state", "21.5", "living_room_temperature", {"value": 21.5})],
    rejected=[Rejected("hass_states/sensor/living_room_temperature/state", "unavailable", "bad_json")],
    ignored=[("hass_states/binary_sensor/door/state", "off"), ("hass_states/sensor/living_room_temperature/friendly_name", '"Living room"')],
)

CASES = {
    "zigbee2mqtt.yaml": ZIGBEE2MQTT,
    "tasmota.yaml": TASMOTA,
    "shelly-gen2.yaml": SHELLY,
    "esphome.yaml": ESPHOME,
    "homeassistant.yaml": HOMEASSISTANT,
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
    """The preset as an agent runs it: one-field sensors scored by the test's model, the others learning.

    (The shipped models the preset assigns are checked apart.) ``state_dir`` is the test's own.
    """
    state = Path(tempfile.mkdtemp(prefix="preset-state-"))
    return load_config(path, [
        *agent_overrides(broker, models_dir, prefix="preset"),
        "models.assign={}",
        "learning.enabled=true",
        f"learning.state_dir={state}",
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
    # A counter's baseline first; a Scored without payload is another sensor of the message before it.
    baselines = [r for r in device.rejected if r.reason == "rate_pending"]
    others = [r for r in device.rejected if r.reason != "rate_pending"]
    ordered: list[Scored | Rejected] = [*baselines, *device.scored, *others]
    for message in ordered:
        if message.payload:
            sensor.send(message.topic, message.payload)
    verdicts = [json.loads(m.payload) for m in out.wait_count(f"edge/{aid}/verdicts/", len(device.scored))]
    errors = [json.loads(m.payload) for m in out.wait_count(f"edge/{aid}/errors", len(device.rejected))]
    time.sleep(0.3)  # nothing more arrives: ignored topics were never subscribed, nothing is scored twice
    assert len(out.json(f"edge/{aid}/verdicts/")) == len(device.scored)
    assert len(out.json(f"edge/{aid}/errors")) == len(device.rejected)

    for expected, verdict in zip(device.scored, verdicts, strict=True):
        assert verdict["sensor_id"] == expected.sensor
        got = {"value": verdict["value"]} if "value" in verdict else verdict["values"]
        assert got == pytest.approx(expected.values) and list(got) == list(expected.values)
        assert 0.0 <= verdict["score"] <= 1.0 and verdict["anomaly"] in (0, 1)
        if expected.ts is None:
            assert abs(verdict["ts"] - sent_at) < 10
        else:
            assert verdict["ts"] == expected.ts
    assert [(e["topic"], e["reason"]) for e in errors] == [(r.topic, r.reason) for r in [*baselines, *others]]


@pytest.mark.broker
@pytest.mark.parametrize("preset", sorted(CASES))
def test_preset_reads_the_devices_real_payloads(
    preset: str, broker: Any, models_dir: Path, run_agent: Any, collect: Any, sensor: Any
) -> None:
    agent = run_agent(preset_config(broker, models_dir, PRESETS / preset))
    check_device(agent, CASES[preset], collect, sensor)


@pytest.mark.broker
def test_shelly_status_topic_alternative(broker: Any, models_dir: Path, run_agent: Any, collect: Any, sensor: Any) -> None:
    [status] = [alt for alt in commented_alternatives(PRESETS / "shelly-gen2.yaml") if alt["topic"].endswith("temperature:0")]
    agent = run_agent(preset_config(broker, models_dir, PRESETS / "shelly-gen2.yaml", f"sources=[{js(status)}]"))
    check_device(agent, SHELLY_STATUS, collect, sensor)


@pytest.mark.broker
def test_esphome_retained_states_are_scored_live_and_not_replayed(
    broker: Any, models_dir: Path, run_agent: Any, collect: Any, sensor: Any
) -> None:
    sensor.send("pump-9/sensor/vibration_rms/state", "0.91", retain=True)  # before the agent: replayed on subscribe
    agent = run_agent(preset_config(broker, models_dir, PRESETS / "esphome.yaml"))
    out = collect([f"edge/{agent.cfg.agent_id}/#"])
    sensor.send("pump-9/sensor/vibration_rms/state", "0.92", retain=True)  # ESPHome's default: retained
    [verdict] = [json.loads(m.payload) for m in out.wait_count(f"edge/{agent.cfg.agent_id}/verdicts/", 1)]
    assert (verdict["sensor_id"], verdict["value"]) == ("pump-9.vibration_rms", 0.92)
    time.sleep(0.3)
    assert len(out.json(f"edge/{agent.cfg.agent_id}/verdicts/")) == 1
    sensor.send("pump-9/sensor/vibration_rms/state", "", retain=True)  # clear the test's retained message


@pytest.mark.broker
def test_a_message_matching_two_sources_is_scored_once(broker: Any, models_dir: Path, run_agent: Any, collect: Any, sensor: Any) -> None:
    sources = [{"topic": "zigbee2mqtt/{sensor}", "optional_fields": ["temperature"]}, {"topic": "zigbee2mqtt/#"}]
    agent = run_agent(preset_config(broker, models_dir, PRESETS / "zigbee2mqtt.yaml", f"sources={js(sources)}"))
    out = collect([f"edge/{agent.cfg.agent_id}/#"])
    for i in range(5):
        sensor.send("zigbee2mqtt/bedroom", js({"temperature": 20 + i / 10, "linkquality": 90}))
    out.wait_count(f"edge/{agent.cfg.agent_id}/verdicts/", 5)
    time.sleep(0.5)  # a copy per matching subscription would have arrived by now
    verdicts = out.json(f"edge/{agent.cfg.agent_id}/verdicts/")
    assert [v["sensor_id"] for v in verdicts] == ["bedroom@temperature"] * 5
    assert out.json(f"edge/{agent.cfg.agent_id}/errors") == []


NOT_MEASUREMENTS = {"linkquality", "battery", "last_seen", "uptime", "Uptime", "rssi", "RSSI", "wifi_signal", "state"}


def test_presets_never_score_what_is_not_a_measurement() -> None:
    for path in PRESETS.glob("*.yaml"):
        for source in load_config(path, [], {}).sources:
            scored = {*(source.fields or []), *(source.optional_fields or [])}
            assert not scored & NOT_MEASUREMENTS, (path.name, scored & NOT_MEASUREMENTS)
            if path.name == "zigbee2mqtt.yaml":  # there, a climate sensor's voltage is its battery's
                assert "voltage" not in scored


def test_docs_show_each_preset_as_it_ships() -> None:
    docs = (REPO / "docs/presets.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL)]
    for path in PRESETS.glob("*.yaml"):
        shipped = yaml.safe_load(path.read_text())
        assert {"sources": shipped["sources"], "models": shipped["models"]} in blocks, f"docs/presets.md lacks {path.name}"


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
    assert "{sensor}/status/temperature:0" in alternatives


def test_each_one_field_sensor_of_a_preset_meets_a_shipped_model_and_the_rest_learn() -> None:
    import fnmatch

    for name, device in CASES.items():
        assign = load_config(PRESETS / name, [], {}).models.assign
        for scored in device.scored:
            model = next((m for pattern, m in assign.items() if fnmatch.fnmatchcase(scored.sensor, pattern)), None)
            if len(scored.values) == 1:
                assert model is not None, (name, scored.sensor, assign)
                assert (REPO / "models" / model / "manifest.json").is_file()
            else:  # a shipped model knows one field: several are learned on the device
                assert model is None, (name, scored.sensor, model)
