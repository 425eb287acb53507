"""A no-model stand-in for the agent: answers every reading on sensors/+ with one QoS 1 reply.

    python -m bench.echo --port 1884 [--host 127.0.0.1] [--prefix edge/echo]

The floor for bench_e2e.py: the same MQTT round trip (subscribe QoS 1, parse the JSON,
publish one reply per reading to <prefix>/verdicts/<sensor_id>, auto-ack) with no
scoring, so the agent's throughput can be read against what paho alone manages here.
Publishes a retained "online" on <prefix>/status once its subscription is granted.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Any

import paho.mqtt.client as paho

from bench import kit


@dataclass
class Echo:
    """One paho client that replies to each reading it receives."""

    host: str
    port: int
    prefix: str
    inflight: int = 1000

    def __post_init__(self) -> None:
        # The agent keeps up to receive_maximum verdicts in flight; give the echo room too.
        self.client = kit.client(client_id="bench-echo", clean_session=True, max_inflight=self.inflight)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.will_set(f"{self.prefix}/status", "offline", qos=1, retain=True)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        client.subscribe("sensors/+", qos=1)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        client.publish(f"{self.prefix}/status", "online", qos=1, retain=True)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.retain:
            return
        sensor = message.topic.rpartition("/")[2]
        try:
            body = json.loads(message.payload)
            reply = {"sensor_id": sensor, "ts": body.get("ts"), "value": body.get("value")}
        except (ValueError, AttributeError):
            reply = {"sensor_id": sensor, "ts": None, "error": "bad payload"}
        client.publish(f"{self.prefix}/verdicts/{sensor}", json.dumps(reply, separators=(",", ":")), qos=1)

    def run(self, stop: threading.Event) -> None:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        try:
            stop.wait()
        finally:
            self.client.publish(f"{self.prefix}/status", "offline", qos=1, retain=True).wait_for_publish(2.0)
            self.client.disconnect()
            self.client.loop_stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prefix", default="edge/echo")
    args = p.parse_args()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Echo(args.host, args.port, args.prefix).run(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
