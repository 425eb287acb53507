"""Home Assistant MQTT discovery: each scored sensor appears as an anomaly binary_sensor and a score sensor.

For every sensor the agent scores, two retained discovery messages are published once
(``<prefix>/binary_sensor/<agent>/<sensor>/config`` and ``<prefix>/sensor/<agent>/<sensor>/config``).
A config holds only what identifies the entity (the sensor, the agent, the topics), never what
changes as the sensor learns: the model and its version (``"37/3600"`` while learning) reach Home
Assistant as attributes from the verdict topic. So a config is retained once per entity, not once
per reading while the sensor learns (that was 103-106 retained messages per entity with rows: 100).
Both entities read the sensor's verdict topic through a ``value_template`` and are available
while the agent's retained status topic says ``online`` (its last will says ``offline``).
They are grouped as one Home Assistant device per sensor. When Home Assistant announces
itself with ``online`` on its status topic (after a restart it may have lost its
entities), every announced sensor is published again.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_agent import package_version
from edge_agent.config import AgentConfig
from edge_agent.core.domain import InvalidReading, Verdict
from edge_agent.mqtt.topics import TopicTemplate, render
from edge_agent.mqtt.transport import MQTTTransport
from edge_agent.pipeline import Envelope, VerdictSink

log = logging.getLogger(__name__)

#: Publishes ``payload`` retained at QoS 1 on ``topic``; False when it could not be sent now.
Publish = Callable[[str, str], bool]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
ORIGIN_NAME = "edge-anomaly-agent"


def discovery_id(text: str) -> str:
    """``text`` as a discovery topic level / unique-id part: only [A-Za-z0-9_-].

    Ids that had to be changed get a CRC-32 suffix, so ``room.1`` and ``room_1`` stay distinct.
    """
    safe = _UNSAFE.sub("_", text)
    if safe == text:
        return text
    return f"{safe}_{zlib.crc32(text.encode('utf-8', 'surrogatepass')):08x}"


@dataclass(frozen=True)
class DiscoveryMessage:
    topic: str
    payload: dict[str, Any]


def discovery_messages(cfg: AgentConfig, sensor_id: str) -> list[DiscoveryMessage]:
    """The binary_sensor and sensor discovery configs for one sensor (pure; used by tests too).

    They depend on the sensor's identity only; learning progress and model versions are attributes.
    """
    prefix = cfg.homeassistant.discovery_prefix
    node = discovery_id(cfg.agent_id)
    obj = discovery_id(sensor_id)
    verdicts = TopicTemplate(cfg.topics.verdicts).render(agent_id=cfg.agent_id, sensor_id=sensor_id)
    status = render(cfg.topics.status, agent_id=cfg.agent_id)
    base_id = f"edge_anomaly_{node}_{obj}"
    common: dict[str, Any] = {
        "state_topic": verdicts,
        "availability_topic": status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "json_attributes_topic": verdicts,
        "json_attributes_template": (
            "{{ {'model': value_json.model, 'model_version': value_json.model_version, "
            "'ts': value_json.ts} | tojson }}"
        ),
        "device": {
            "identifiers": [base_id],
            "name": sensor_id,
            "manufacturer": ORIGIN_NAME,
            "model": "anomaly detection (Isolation Forest)",
        },
        "origin": {"name": ORIGIN_NAME, "sw_version": package_version("unknown")},
        "qos": 1,
    }
    anomaly = {
        **common,
        "name": "Anomaly",
        "unique_id": f"{base_id}_anomaly",
        "device_class": "problem",
        "value_template": "{{ 'ON' if value_json.anomaly == 1 else 'OFF' }}",
        "payload_on": "ON",
        "payload_off": "OFF",
    }
    score = {
        **common,
        "name": "Anomaly score",
        "unique_id": f"{base_id}_score",
        "state_class": "measurement",
        "value_template": "{{ value_json.score }}",
        "suggested_display_precision": 3,
        "icon": "mdi:chart-bell-curve",
    }
    return [
        DiscoveryMessage(f"{prefix}/binary_sensor/{node}/{obj}/config", anomaly),
        DiscoveryMessage(f"{prefix}/sensor/{node}/{obj}/config", score),
    ]


def retained_publisher(transport: MQTTTransport) -> Publish:
    """Publish retained at QoS 1 on the agent's own connection, only while it is up.

    A sensor not announced because the broker was away is announced with its next verdict.
    """

    def publish(topic: str, payload: str) -> bool:
        if not transport.connected:
            return False
        return transport.publish_retained(topic, payload)

    return publish


class HomeAssistantDiscovery:
    """A VerdictSink in front of the transport: announces a sensor before its first verdict goes out."""

    def __init__(self, cfg: AgentConfig, sink: VerdictSink, publish: Publish) -> None:
        self.cfg = cfg
        self.sink = sink
        self.publish = publish
        self.status_topic = cfg.homeassistant.status_topic
        self._lock = threading.Lock()  # the worker announces, the network thread republishes
        self._announced: set[str] = set()  # sensor ids whose configs the broker has

    # -- VerdictSink (scoring worker) ------------------------------------------------------

    def publish_verdict(self, verdict: Verdict, envelope: Envelope) -> None:
        with self._lock:
            known = verdict.sensor_id in self._announced
        if not known and self._announce(verdict.sensor_id):
            with self._lock:
                self._announced.add(verdict.sensor_id)
        self.sink.publish_verdict(verdict, envelope)

    def publish_error(self, invalid: InvalidReading) -> None:
        self.sink.publish_error(invalid)

    def settle(self, token: object) -> None:
        self.sink.settle(token)

    # -- Home Assistant's birth message (MQTT network thread) ------------------------------

    def on_status(self, payload: bytes) -> None:
        """Home Assistant's status: on ``online`` publish every sensor's discovery again."""
        if payload.strip() != b"online":
            return
        with self._lock:
            sensors = sorted(self._announced)
        for sensor_id in sensors:
            self._announce(sensor_id)
        log.info("Home Assistant is online: published discovery for %d sensors again", len(sensors))

    def _announce(self, sensor_id: str) -> bool:
        sent = True
        for message in discovery_messages(self.cfg, sensor_id):
            sent = self.publish(message.topic, json.dumps(message.payload, separators=(",", ":"))) and sent
        return sent
