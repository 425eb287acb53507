"""``edge-agent demo``: a broker, the simulator and the agent on this machine, verdicts on screen.

The demo leaves no trace. It starts a broker of its own (mosquitto, else an embedded one) on
``--broker-port`` or a free port, unless told ``--broker configured``. On any broker it used,
on the way out it ends the agent's session (a clean connect with its client id) and clears
every retained message it published (its status, under ``edge/<demo id>/``); Home Assistant
discovery is off, and learned models go to a temporary folder removed at exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent import Agent, load_models
from edge_agent.config import AgentConfig, client_id, load_config, mqtt_password
from edge_agent.core.model import ModelError
from edge_agent.mqtt.local_broker import MOSQUITTO, EmbeddedBroker, MosquittoBroker
from edge_agent.mqtt.topics import render

log = logging.getLogger(__name__)


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pick_broker(cfg: AgentConfig, choice: str, port: int | None = None) -> tuple[str, int, Any, str]:
    """(host, port, broker to stop or None, description) for the --broker choice."""
    if choice == "configured":
        host, configured_port = cfg.mqtt.host, cfg.mqtt.port
        if not reachable(host, configured_port):
            raise RuntimeError(f"the configured broker {host}:{configured_port} is not reachable")
        return host, configured_port, None, f"the configured broker at {host}:{configured_port}"
    if port is not None and reachable("127.0.0.1", port, timeout=0.3):
        raise RuntimeError(f"port {port} is in use: pick another with --broker-port, or use that broker with --broker configured")
    if choice in ("own", "mosquitto") and MOSQUITTO is not None:
        broker: Any = MosquittoBroker(port=port)
        broker.start()
        return broker.host, broker.port, broker, f"a mosquitto of its own on {broker.host}:{broker.port}"
    if choice == "mosquitto":
        raise RuntimeError("no mosquitto binary on this machine")
    try:
        broker = EmbeddedBroker(port=port)
    except ImportError:
        raise RuntimeError("no mosquitto installed and amqtt is missing: pip install '.[demo]', or use --broker configured") from None
    broker.start()
    return broker.host, broker.port, broker, f"an embedded broker (amqtt) of its own on {broker.host}:{broker.port}"


def clear_traces(cfg: AgentConfig, timeout: float = 5.0) -> tuple[int, bool]:
    """End the agent's session and clear the retained status it leaves: (retained messages cleared, ok).

    A connect with the agent's client id and a clean start discards the session the broker kept
    for it (and the readings queued there); a zero-length retained message deletes a retained one.
    """
    v5 = cfg.mqtt.protocol == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id(cfg), protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else True,
    )
    if cfg.mqtt.username is not None:
        client.username_pw_set(cfg.mqtt.username, mqtt_password(cfg, os.environ))
    retained: set[str] = set()
    subscribed = threading.Event()
    client.on_message = lambda c, u, m: retained.add(m.topic) if m.retain and m.payload else None
    client.on_subscribe = lambda *a: subscribed.set()
    # The agent retains only its status (Home Assistant discovery is off in the demo).
    status = render(cfg.topics.status, agent_id=cfg.agent_id)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(status, qos=1)
    try:
        if v5:
            client.connect(cfg.mqtt.host, cfg.mqtt.port, clean_start=True)  # session expiry 0: ends at disconnect
        else:
            client.connect(cfg.mqtt.host, cfg.mqtt.port)
        client.loop_start()
        if not subscribed.wait(timeout):
            return 0, False
        time.sleep(0.5)  # retained messages follow the SUBACK
        infos = [client.publish(topic, b"", qos=1, retain=True) for topic in sorted(retained)]
        for info in infos:
            info.wait_for_publish(timeout)
        return len(infos), True
    except (OSError, ValueError, RuntimeError) as e:
        log.warning("could not clean up the demo's traces on %s:%d: %s", cfg.mqtt.host, cfg.mqtt.port, e)
        return 0, False
    finally:
        client.disconnect()
        client.loop_stop()


class VerdictPrinter:
    """Subscribes to the agent's verdicts and prints one line per reading."""

    def __init__(self, host: str, port: int, verdicts: str, out: Any = sys.stdout) -> None:
        self.out = out
        self.count = 0
        self.anomalies = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-demo-{uuid.uuid4().hex[:6]}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(verdicts, qos=1)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            v = json.loads(message.payload)
        except ValueError:
            return
        self.count += 1
        value = v.get("value", v.get("values"))
        score = float(v.get("score", 0.0))
        bar = "#" * round(score * 20)
        flag = "  << ANOMALY" if v.get("anomaly") else ""
        self.anomalies += bool(v.get("anomaly"))
        stamp = time.strftime("%H:%M:%S", time.localtime(float(v["ts"]))) if isinstance(v.get("ts"), (int, float)) else str(v.get("ts"))
        print(f"{stamp}  {v.get('sensor_id', '?'):<16} {value!s:>10}  score {score:0.3f} {bar:<20}{flag}", file=self.out, flush=True)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_demo(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    config_path = Path(args.config)
    cfg = load_config(config_path if config_path.exists() else None, [], os.environ)
    choice = "own" if args.broker == "auto" else args.broker
    try:
        host, port, broker, where = pick_broker(cfg, choice, args.broker_port)
    except (RuntimeError, OSError) as e:
        print(f"edge-agent demo: {e}", file=sys.stderr)
        return 1
    demo_id = f"demo-{uuid.uuid4().hex[:4]}"
    scratch = Path(tempfile.mkdtemp(prefix="edge-demo-"))
    overrides = [
        f"agent_id={demo_id}", f"mqtt.host={host}", f"mqtt.port={port}", f"http.port={args.http_port}", "log_level=WARNING",
        "mqtt.client_id=null", "mqtt.session_expiry=0", "homeassistant.enabled=false", f"learning.state_dir={scratch}",
    ]
    if isinstance(broker, EmbeddedBroker):
        overrides.append("mqtt.protocol=3.1.1")  # amqtt speaks MQTT 3.1.1 only
    try:
        cfg = load_config(config_path if config_path.exists() else None, overrides, os.environ)
        base = config_path.resolve().parent if config_path.exists() else Path.cwd()
        return _run(cfg, base, args, host, port, where, demo_id)
    except ModelError as e:
        print(f"edge-agent demo: cannot load model: {e}", file=sys.stderr)
        return 1
    finally:
        if broker is not None:
            broker.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _run(cfg: AgentConfig, base: Path, args: argparse.Namespace, host: str, port: int, where: str, demo_id: str) -> int:
    models = load_models(cfg, base)
    stop = threading.Event()
    previous = {s: signal.signal(s, _stopper(stop)) for s in (signal.SIGINT, signal.SIGTERM)}
    agent = Agent(cfg, models, base=base)
    printer: VerdictPrinter | None = None
    sim_thread: threading.Thread | None = None
    try:
        agent.start()
        _, http_port = agent.http_address or ("-", 0)
        verdicts = _filter(cfg.topics.verdicts, demo_id, "+")
        alerts = _filter(cfg.topics.alerts, demo_id, "#")
        print(_banner(where, host, port, http_port, verdicts, alerts, args, demo_id), flush=True)
        deadline = time.monotonic() + 10
        while not agent.readiness()[0] and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.05)
        printer = VerdictPrinter(host, port, verdicts)
        sim_thread = threading.Thread(target=_simulate, args=(host, port, args, stop), name="simulator", daemon=True)
        sim_thread.start()
        end = time.monotonic() + args.duration if args.duration else None
        while not stop.wait(0.2):
            if end is not None and time.monotonic() >= end:
                stop.set()
    finally:
        stop.set()
        if sim_thread is not None:
            sim_thread.join(10)
        agent.stop(timeout=5)
        if printer is not None:
            printer.close()
            print(f"\nstopped: {printer.count} verdicts shown, {printer.anomalies} anomalies", flush=True)
        cleared, ok = clear_traces(cfg)
        print(f"left no trace on {host}:{port}: session ended, {cleared} retained message(s) cleared" if ok
              else f"could not clean up on {host}:{port}: the agent's session or its retained status may remain", flush=True)
        for s, h in previous.items():
            signal.signal(s, h)
    return 0


def _filter(template: str, agent_id: str, wildcard: str) -> str:
    """A subscription filter for every sensor's topic made from an output template."""
    return template.replace("{agent_id}", agent_id).replace("{sensor_id}", wildcard)


def _stopper(stop: threading.Event) -> Any:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return handler


def _simulate(host: str, port: int, args: argparse.Namespace, stop: threading.Event) -> None:
    from simulator.cli import build_parser, run

    sim_args = build_parser().parse_args([
        "--host", host, "--port", str(port), "--sensors", str(args.sensors),
        "--rate", str(args.rate), "--seed", str(args.seed), "--anomaly-rate", str(args.anomaly_rate),
    ])
    run(sim_args, stop)


def _banner(where: str, host: str, port: int, http_port: int, verdicts: str, alerts: str, args: argparse.Namespace, demo_id: str) -> str:
    return f"""
edge-agent demo: {args.sensors} simulated sensors at {args.rate}/s each, scored live
  broker     {where}
  agent      {demo_id}
  watch      mosquitto_sub -h {host} -p {port} -t '{alerts}' -v
  metrics    curl -s http://127.0.0.1:{http_port}/metrics | grep edge_agent_
  predict    curl -s -X POST http://127.0.0.1:{http_port}/predict -H 'Content-Type: application/json' -d '{{"value": 0.95}}'
  stop       Ctrl-C
time      sensor                value  score
"""
