"""The running agent's footprint and flow control: no scikit-learn, nothing dropped under load."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO

pytestmark = pytest.mark.broker


def test_the_running_agent_never_imports_scikit_learn_or_scipy(broker, tmp_path) -> None:
    """Load models, start the agent, score readings and answer /predict; then look at sys.modules.

    Nor what it needs only on request (Home Assistant discovery, off here; "did you mean" for
    a bad key; its version, for /openapi.json): each costs a part of the 50 MB budget."""
    script = textwrap.dedent(f"""
        import json, sys, time, urllib.request
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        from edge_agent.agent import Agent, load_models
        from edge_agent.config import load_config
        cfg = load_config({str(REPO / "config.yaml")!r}, ["mqtt.host={broker.host}", "mqtt.port={broker.port}",
                          "http.port=0", "http.host=127.0.0.1", "agent_id=lean",
                          "learning.state_dir={tmp_path}", "learning.rows=50"], {{}})
        agent = Agent(cfg, load_models(cfg, __import__("pathlib").Path({str(REPO)!r})), env={{}})
        agent.start()
        while not agent.readiness()[0]:
            time.sleep(0.02)
        c = paho.Client(CallbackAPIVersion.VERSION2); c.connect({broker.host!r}, {broker.port}); c.loop_start()
        for i in range(120):  # a shipped model's sensor, and one that learns its own (numpy fitter)
            c.publish("sensors/vibration-1", json.dumps({{"value": 0.9, "ts": i}}), qos=1).wait_for_publish()
            c.publish("sensors/boiler", json.dumps({{"value": 60 + i % 3, "ts": i}}), qos=1).wait_for_publish()
        deadline = time.time() + 20
        while "boiler" not in agent.engine.learned and time.time() < deadline:
            time.sleep(0.05)
        host, port = agent.http_address
        req = urllib.request.Request(f"http://{{host}}:{{port}}/predict", data=b'{{"value": 0.95}}',
                                     headers={{"Content-Type": "application/json"}})
        print(json.dumps({{"predict": json.load(urllib.request.urlopen(req)),
                          "learned": "boiler" in agent.engine.learned,
                          "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy", "joblib")),
                          "on_request": sorted({{"edge_agent.mqtt.homeassistant", "difflib", "importlib.metadata"}} & set(sys.modules))}}))
        agent.stop(); c.loop_stop()
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["predict"]["anomaly"] == 0
    assert out["learned"], "the learning sensor never got its model"
    assert out["heavy"] == []
    assert out["on_request"] == []


def test_a_tiny_hand_over_applies_backpressure_and_loses_nothing(start_agent, collect, sensor) -> None:
    """With room for two readings, the broker holds the rest until the agent acknowledges."""
    agent = start_agent("pipeline.queue_size=2", "pipeline.max_batch=1", "mqtt.receive_maximum=4")
    aid = agent.cfg.agent_id
    out = collect([f"edge/{aid}/verdicts/#"])
    n = 1500
    started = time.monotonic()
    for i in range(n):
        sensor.client.publish("sensors/burst", json.dumps({"value": 0.9, "ts": i}), qos=1)
    msgs = out.wait_count(f"edge/{aid}/verdicts/burst", n, timeout=60)
    assert [json.loads(m.payload)["ts"] for m in msgs] == list(range(n))  # all, once, in order
    assert agent.registry.get_sample_value("edge_agent_verdicts_dropped_total") == 0
    assert agent.metrics.batch_size.collect()[0].samples  # the worker really scored them
    assert time.monotonic() - started < 60
