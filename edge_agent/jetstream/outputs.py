"""Where a group agent's verdicts, alerts and errors go: MQTT topics, NATS subjects, or both, with today's payloads.

A NATS subject is the MQTT topic with ``.`` for ``/`` (each level a token, as
:func:`~edge_agent.jetstream.envelope.token` writes sensor ids), which is also what NATS's
own MQTT listener maps topics to. Delivered means: MQTT, the broker's PUBACK; NATS, the
server has it (a flush after the publish).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import AgentConfig
from edge_agent.core.domain import Verdict
from edge_agent.core.episodes import NEW_NORMAL
from edge_agent.jetstream.envelope import token
from edge_agent.mqtt.access import apply_access

log = logging.getLogger(__name__)


def verdict_body(verdict: Verdict, redelivered: bool, windows_restarted: bool) -> tuple[str, bool]:
    """The verdict's JSON and whether it also goes to the alerts topic."""
    body = verdict.to_payload()
    if redelivered:
        body["redelivered"] = True  # as on MQTT: JetStream delivered it again and this agent does not know it
    if windows_restarted:
        # The sensor's streaming features (means, deltas, k-of-n) start again here: it moved to this agent.
        body["windows_restarted"] = True
    alert = bool(verdict.anomaly or verdict.event == NEW_NORMAL) and not verdict.duplicate
    return json.dumps(body, separators=(",", ":")), alert


def subject_of(topic: str) -> str:
    """The NATS subject for an output topic: ``edge/a/verdicts/x`` -> ``edge.a.verdicts.x``."""
    return ".".join(token(level) for level in topic.split("/"))


class MqttOutput:
    """A QoS 1 publisher whose ``publish`` returns a future settled by the broker's PUBACK."""

    def __init__(self, cfg: AgentConfig, env: dict[str, str]) -> None:
        m = cfg.mqtt
        self.cfg = cfg
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{m.client_id or 'edge-agent-' + cfg.agent_id}-out",
                                  protocol=paho.MQTTv5 if m.protocol == "5" else paho.MQTTv311)
        apply_access(self.client, cfg, env)  # the agent's user, password and TLS: this connection is no weaker
        self.client.max_inflight_messages_set(256)
        self.client.reconnect_delay_set(int(m.reconnect_min_delay), max(1, int(m.reconnect_max_delay)))
        self.connected = threading.Event()
        self.client.on_publish = self._on_publish
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self._lock = threading.Lock()
        self._waiting: dict[int, concurrent.futures.Future[None]] = {}  # mid -> settled by its PUBACK
        self._early: dict[int, str] = {}  # mid -> refusal ("" for none), for PUBACKs ahead of their registration

    def start(self) -> None:
        self.client.connect_async(self.cfg.mqtt.host, self.cfg.mqtt.port, keepalive=self.cfg.mqtt.keepalive)
        self.client.loop_start()

    def publish(self, topic: str, payload: str) -> concurrent.futures.Future[None]:
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        # Not under our lock: paho holds its own while it calls on_publish, which takes ours.
        info = self.client.publish(topic, payload, qos=1)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):  # NO_CONN: queued, sent on reconnect
            done.set_exception(ConnectionError(f"MQTT publish to {topic} failed: {paho.error_string(info.rc)}"))
            return done
        with self._lock:
            refusal = self._early.pop(info.mid, None)
            if refusal is None:
                self._waiting[info.mid] = done
                return done
        self._settle(done, refusal)
        return done

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        refusal = f"broker refused a publish: {reason}" if getattr(reason, "is_failure", False) else ""
        with self._lock:
            done = self._waiting.pop(mid, None)
            if done is None:  # the PUBACK overtook publish()'s registration
                self._early[mid] = refusal
                return
        self._settle(done, refusal)

    @staticmethod
    def _settle(done: concurrent.futures.Future[None], refusal: str) -> None:
        if refusal:
            done.set_exception(ConnectionError(refusal))
        else:
            done.set_result(None)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
