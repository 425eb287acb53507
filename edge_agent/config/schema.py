"""The configuration's schema: one dataclass per section, each field with its default, its description and its bounds.

Where the scoring core has a default (episodes.Decision, adaptation.LearningPlan), the field takes it from
there, so that a default is written once.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

from edge_agent.core.adaptation import LearningPlan
from edge_agent.core.durations import Duration
from edge_agent.core.episodes import Decision


def _f(default: Any, doc: str, **bounds: Any) -> Any:
    """A config field with a default, a description and optional bounds/choices."""
    meta = {"doc": doc, **bounds}
    if isinstance(default, (list, dict)):
        return field(default_factory=functools.partial(copy.copy, default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TLSConfig:
    enabled: bool = _f(False, "Connect to the broker over TLS.")
    ca_file: str | None = _f(None, "CA bundle to verify the broker's certificate (system CAs when unset).")
    cert_file: str | None = _f(None, "Client certificate (PEM) for mutual TLS.")
    key_file: str | None = _f(None, "Client private key (PEM) for mutual TLS.")
    check_hostname: bool = _f(True, "Verify that the broker's certificate matches mqtt.host.")


@dataclass
class MQTTConfig:
    host: str = _f("localhost", "Broker host name or address.")
    port: int = _f(1883, "Broker port.", min=1, max=65535)
    client_id: str | None = _f(None, "MQTT client id of the intake (readings in); stable across restarts so the session persists. Verdicts go out as <client id>-out. Default: edge-agent-{agent_id}.")
    username: str | None = _f(None, "Broker user name.")
    password_env: str = _f("EDGE_AGENT_MQTT_PASSWORD", "Environment variable holding the broker password.")
    password_file: str | None = _f(None, "File holding the broker password (used when the environment variable is unset).")
    protocol: str = _f("5", "MQTT version: 5 (session expiry and receive maximum) or 3.1.1 (for brokers without MQTT 5; the session persists with clean_session false).", choices=["5", "3.1.1"])
    keepalive: int = _f(30, "Keepalive interval in seconds.", min=5, max=3600)
    session_expiry: int = _f(86400, "Seconds the broker keeps the agent's session (and its queued readings) while disconnected.", min=0, max=4294967295)
    receive_maximum: int = _f(512, "Readings the broker may send before the agent acknowledges any (backpressure window), and the most the agent holds unacknowledged: its intake stops reading at this many (Mosquitto 2.0 does not keep to the window by itself).", min=1, max=65535)
    max_in_flight: int = _f(512, "Messages the agent publishes (verdicts, alerts, reports) and the broker has not yet acknowledged, at most (and at most the Receive Maximum an MQTT 5 broker announces); scoring waits while it is reached. Far below MQTT's 65,535 message ids, which a client that runs out of overwrites queued messages with.", min=16, max=60_000)
    broker_max_packet_size: int = _f(0, "Largest MQTT packet the broker takes, in bytes. MQTT 5 learns Mosquitto's max_packet_size from the CONNACK; set this under 3.1.1, or to Mosquitto's message_size_limit, which no CONNACK tells (0: MQTT's own limit). A verdict that would not fit is replaced by a short report on the errors topic and its reading is acknowledged; a broker that gets one disconnects the agent instead, again on every resend.", min=0, max=268_435_455)
    reconnect_min_delay: float = _f(1.0, "First reconnect delay in seconds.", min=0.1, max=3600)
    reconnect_max_delay: float = _f(30.0, "Cap on the reconnect backoff in seconds.", min=0.1, max=3600)
    tls: TLSConfig = field(default_factory=TLSConfig, metadata={"doc": "TLS settings."})


@dataclass
class SourceConfig:
    topic: str = _f("sensors/+", "Topic filter, or template with {sensor} marking the sensor-id level (e.g. tele/{sensor}/SENSOR). Without {sensor}, the last level is the sensor id.")
    fields: list[str] | None = _f(None, "Payload fields to score, dotted paths for nested JSON (e.g. DS18B20.Temperature). Unset: a bare number or the 'value' key.")
    ts_field: str = _f("ts", "Payload key holding the reading's own timestamp (epoch seconds or ISO-8601).")
    optional_fields: list[str] | None = _f(None, "Fields scored when a message has them (a mixed fleet under one topic). The sensor id then ends in @ and the fields it has, e.g. plug-1@power,current: one model per device and field set. A field missing from a message keeps the device's last known value (partial updates).")
    rates: list[str] | None = _f(None, "Fields (from fields or optional_fields) that are rising counters, e.g. an energy total: scored as their rise per second, named <field>_rate.")
    each: str | None = _f(None, "A pattern (* and ?) for payload keys whose objects are sensors of their own, e.g. DS18B20* or temperature:*; fields are looked up inside each.")
    each_in: str | None = _f(None, "Dotted path of the object whose keys `each` matches (e.g. params); unset: the payload itself.")
    seq_field: str | None = _f(None, "Payload key holding a per-sensor sequence number (an integer rising by one a reading); a gap is counted in edge_agent_readings_missed_total and logged: evidence that the broker dropped readings (docs/broker.md).")
    exclude: list[str] | None = _f(None, "Topic filters this source skips: messages on them are acknowledged and neither scored nor reported (e.g. +/sensor/uptime/state).")
    sensor_id: str | None = _f(None, "Sensor id template: {sensor}, {levelN} (topic level N, from 1), {key} (the key `each` matched), {item.PATH}, {payload.PATH}. Unset: {sensor}, or {sensor}-{key} with `each`.")


@dataclass
class TopicsConfig:
    verdicts: str = _f("edge/{agent_id}/verdicts/{sensor_id}", "Where each reading's verdict is published.")
    alerts: str = _f("edge/{agent_id}/alerts/{sensor_id}", "Where anomalies are published.")
    errors: str = _f("edge/{agent_id}/errors", "Where invalid messages are reported.")
    status: str = _f("edge/{agent_id}/status", "Retained online/offline status (offline is the last will).")


@dataclass
class ModelsConfig:
    dir: str = _f("models", "Directory holding one sub-directory per model.")
    default: str | None = _f("default", "Model for sensors no 'assign' pattern matches, and for /predict without sensor_id.")
    assign: dict[str, str] = _f({}, "Sensor-id glob pattern -> model name; the first matching pattern wins.")
    pinned_sha256: dict[str, str] = _f({}, "Model name -> expected sha256 of its model file; overrides the manifest's value.")
    pinned_manifest_sha256: dict[str, str] = _f({}, "Model name -> expected sha256 of its manifest.json (sha256sum models/NAME/manifest.json); the manifest holds the calibration, ranges, features and imputes, and names the forest's sha256.")


@dataclass
class DecisionConfig:
    threshold: float = _f(Decision.threshold, "Calibrated score at or above which a reading counts as anomalous.", min=0.0, max=1.0)
    k: int = _f(Decision.k, "Alert when at least k of the last n readings of a sensor are over the threshold.", min=1, max=1000)
    n: int = _f(Decision.n, "Window for the k-of-n rule.", min=1, max=1000)
    clear_threshold: float | None = _f(Decision.clear, "Hysteresis: a sensor in alert stays anomalous while its score is at least this (at most threshold), so a score hovering at the threshold does not flap; null: none.", min=0.0, max=1.0)
    new_normal_after: Duration = _f(Duration(Decision.new_normal_after), "An anomalous episode that lasts this long (by the readings' own timestamps, else their arrival), and a feature window of readings (30 with the default features), is the sensor's new normal: one verdict with event new_normal goes to the alerts topic, the alert ends, and a sensor that learns refits on its recent readings, flagged ones included. A sensor scored by an assigned model keeps alerting while the change lasts. 0: never.", min=0.0, max=365 * 86400.0)
    end_after: int = _f(Decision.end_after, "An episode ends with this many readings in a row that no longer alert; a flagged reading before that continues it, so a burst of spikes is one alert.", min=1, max=10000)
    record_horizon: Duration = _f(Duration(Decision.record_horizon), "A sensor's records are its highest and lowest normal readings over this span (by the readings' own timestamps, else their arrival). A reading past them by a third of the record's distance from the sensor's mean scores over the threshold, whatever the model makes of it. Checked once the records span a day. 0: no records.", min=0.0, max=365 * 86400.0)
    repeat_horizon: Duration = _f(Duration(Decision.repeat_horizon), "How long a sensor remembers its flagged scores. An episode that opens with a score no higher than one of them is a repeat: its first reading has event repeat instead of onset, its readings are anomalous, and it has no end event (a new normal, if it lasts, is announced). The sensor that spikes twice a day alerts once, and again for something worse. 0: every episode has an onset.", min=0.0, max=365 * 86400.0)


@dataclass
class LearningConfig:
    enabled: bool = _f(True, "Sensors that no models.assign pattern matches learn a model of their own from their first readings (else models.default scores them).")
    period: Duration = _f(Duration(LearningPlan.period), "How long a new sensor learns before it is scored (by its readings' own timestamps, else their arrival; its verdicts say learning until then), and at least 50 readings; it should cover the sensor's normal ups and downs.", min=0.0, max=365 * 86400.0)
    rows: int = _f(LearningPlan.rows, "At most this many readings to learn from: a sensor that reports fast is scored once it has them, before period is over. With refits on, a model that knows fewer than refit_rows readings is refitted as soon as as many new ones have come, doubling what it knows.", min=50, max=1_000_000)
    refit_every: Duration = _f(Duration(LearningPlan.refit_every), "Refit a learned model this often (by the readings' clocks) on its most recent refit_rows readings, to follow slow change; 0: never (the first model stays, except after a new normal).", min=0.0, max=365 * 86400.0)
    refit_jitter: float = _f(LearningPlan.refit_jitter, "Each sensor refits after refit_every less up to this share of it, a share fixed by its id: sensors that started together spread their refits over that stretch instead of refitting at once (0: all at refit_every).", min=0.0, max=0.9)
    refit_rows: int = _f(LearningPlan.refit_rows, "Readings a refit learns from: the most recent ones, without those flagged (unless the model is stale, see stale_share).", min=50, max=1_000_000)
    stale_share: float = _f(LearningPlan.stale_share, "When more than this share of the readings since the last fit were flagged, the sensor has moved to a new normal: the refit learns from the flagged readings too (1: never).", min=0.0, max=1.0)
    features: list[str] = _f(list(LearningPlan.features), "Streaming features a sensor learns on, per field: value, delta, repeats, mean:N, mean_dev:N, std:N, drift:N (N readings), season:1d, season:1w (the reading against the same time of day or week one cycle before, from timestamps). drift and season are watched by the range check only. A sensor keeps the features it first learned on until its learned model is deleted from state_dir.")
    leave_out_outliers: bool = _f(LearningPlan.leave_out_outliers, "Before a fit, leave out the readings a first forest isolates far more easily than the rest, so that a spike or a stuck stretch while a sensor learns does not become its normal. It suits a sensor that may learn while something is already wrong; it costs false alarms on a sensor whose normal has rare, recurring extremes (a daily start and stop, bursty counts), which it leaves out too.")
    state_dir: str = _f("state", "Folder for learned models, kept across restarts (relative to the config file).")
    fits: str = _f("process", "Where fits run: process, a child process of the agent at a lower priority (it needs no MQTT or HTTP imports, and exits when idle), so fits never hold the scoring worker's GIL; thread, a thread of the agent (no second process, but a fit's seconds of work delay verdicts).", choices=["process", "thread"])
    fit_nice: int = _f(10, "Niceness the fit process adds to its own (0-19): under full load the scheduler gives scoring the CPU first.", min=0, max=19)
    fit_idle_exit: Duration = _f(Duration.parse("5m"), "The fit process exits after this long without a fit, returning its memory (the edge_agent_fit_worker_rss_bytes gauge; see docs/results/performance.md); the next fit starts it again (0: it stays).", min=0.0, max=365 * 86400.0)


@dataclass
class PipelineConfig:
    queue_size: int = _f(10000, "Readings handed over and waiting to be scored, at most.", min=1, max=10_000_000)
    max_batch: int = _f(512, "Readings scored together at most, when a queue has built up.", min=1, max=100_000)
    held_verdicts: int = _f(10000, "No longer used (accepted so existing configs load): verdicts made while the publishing connection is down wait in its client's queue, at most mqtt.max_in_flight, and none is dropped.", min=0, max=10_000_000)
    max_sensors: int = _f(10000, "Distinct sensors tracked at most. A new sensor beyond it takes the place of another: of the sensors that sent one reading so far, the one heard from longest ago, else the sensor idle longest (counted in edge_agent_sensors_evicted_total; its learned model stays).", min=1, max=10_000_000)
    error_log_interval: float = _f(1.0, "Minimum seconds between two log lines about invalid messages of one reason (the rest are counted into the next line).", min=0.0, max=3600)
    error_report_rate: float = _f(100.0, "Reports per second on the errors topic at most (every invalid message is still counted in metrics).", min=0.1, max=1_000_000)
    shutdown_timeout: float = _f(10.0, "Seconds to finish readings in hand on SIGTERM.", min=0.0, max=600)


@dataclass
class HTTPConfig:
    enabled: bool = _f(True, "Serve /predict, /metrics, /healthz and /readyz.")
    host: str = _f("0.0.0.0", "Address to bind.")
    port: int = _f(8000, "Port to bind (0: any free port).", min=0, max=65535)
    max_body_bytes: int = _f(65536, "Largest request body accepted (413 beyond).", min=16, max=64 * 1024 * 1024)
    read_timeout: float = _f(10.0, "Seconds a client may take to send its request.", min=0.1, max=600)
    token_env: str = _f("EDGE_AGENT_HTTP_TOKEN", "Environment variable holding the bearer token POST /predict requires (unset or empty: no token required).")
    token_file: str | None = _f(None, "File holding that token (used when the environment variable is unset). /healthz and /readyz stay open.")
    metrics_token: bool = _f(False, "Require the token for /metrics too (it names every sensor, its state and its model hashes); Prometheus sends it with authorization: {credentials_file: ...}.")
    sensor_series: int = _f(1000, "Sensors given /metrics series of their own (readings, anomalies, episodes, score, state, learning), the first to send (an evicted sensor's series go with it); the readings of the rest count in sensor=\"_other\". Rendering costs about 0.1 ms a sensor.", min=0, max=10_000_000)


@dataclass
class HomeAssistantConfig:
    enabled: bool = _f(False, "Announce each sensor to Home Assistant by MQTT discovery: a binary_sensor for its anomaly state and a sensor for its score (retained).")
    discovery_prefix: str = _f("homeassistant", "Home Assistant's MQTT discovery prefix.")
    status_topic: str = _f("homeassistant/status", "Where Home Assistant announces itself; discovery is published again when it says online.")


@dataclass
class NatsTLSConfig:
    enabled: bool = _f(False, "Connect to NATS over TLS only: a server that does not require TLS is refused before any password or token is sent. (A server that requires TLS gets it even when this is off, verified against ca_file or the system CAs.)")
    ca_file: str | None = _f(None, "CA bundle to verify the NATS servers' certificates (system CAs when unset).")
    cert_file: str | None = _f(None, "Client certificate (PEM) for mutual TLS (the server's tls { verify: true }).")
    key_file: str | None = _f(None, "Client private key (PEM) for mutual TLS.")
    check_hostname: bool = _f(True, "Verify that a server's certificate matches the host name in its URL in nats.servers.")


@dataclass
class NatsConfig:
    enabled: bool = _f(False, "Join the group of agents on NATS JetStream (docs/operations.md#scale-out) instead of subscribing to the sources on MQTT: readings come from the stream the bridge (edge-agent bridge) fills, each agent consumes its share of the partitions.")
    servers: list[str] = _f(["nats://localhost:4222"], "NATS server URLs (nats://host:port), tried in turn.")
    stream: str = _f("READINGS", "JetStream stream holding the readings.")
    subject: str = _f("readings", "Subject prefix: readings are published on <subject>.<sensor> and stored on <subject>.<partition>.<sensor>.")
    partitions: int = _f(12, "Partitions the stream's subject transform spreads the sensors over (partition(n, sensor)); fixed when the stream is made. More agents than partitions leave agents idle.", min=1, max=1024)
    replicas: int = _f(1, "Replicas of the stream and the buckets (1, or 3 on a 3-node cluster).", min=1, max=5)
    group: str = _f("agents", "Priority group name of the pinned consumers (at most 16 characters: letters, digits, -, _, /, =).")
    bucket: str = _f("edge-group", "KV bucket holding the partition assignment; <bucket>-members holds the members, each key expiring member_ttl after its last heartbeat.")
    models_bucket: str = _f("edge-models", "Object store bucket holding learned models by partition and sensor: a sensor that moves keeps its model.")
    max_ack_pending: int = _f(1000, "Readings of one partition handed out and not yet acknowledged, at most: the backpressure window.", min=1, max=1_000_000)
    ack_wait: Duration = _f(Duration.parse("30s"), "A reading not acknowledged this long after delivery is delivered again (to whichever agent holds its partition then).", min=0.5, max=86400.0)
    pin_timeout: Duration = _f(Duration.parse("10s"), "A pinned agent that has not pulled for this long loses the pin, so the partition's next owner can take over after a crash.", min=0.5, max=3600.0)
    member_ttl: Duration = _f(Duration.parse("10s"), "An agent whose heartbeat is this old is out of the group; it beats every third of this.", min=1.0, max=3600.0)
    duplicate_window: Duration = _f(Duration.parse("2m"), "The stream drops a reading whose Nats-Msg-Id it stored within this window (a bridge resending after a crash).", min=1.0, max=7 * 86400.0)
    max_age: Duration = _f(Duration.parse("1d"), "Readings older than this leave the stream, answered or not (0: never).", min=0.0, max=365 * 86400.0)
    outputs: str = _f("mqtt", "Where verdicts, alerts and errors go: mqtt (the topics, on mqtt.host), nats (the same names with . for /, on the NATS servers), or both.", choices=["mqtt", "nats", "both"])
    user: str | None = _f(None, "NATS user name (the server's authorization { user, password }); the password comes from password_env or password_file. One kind of authentication at a time: user, a token or creds_file.")
    password_env: str = _f("EDGE_AGENT_NATS_PASSWORD", "Environment variable holding the NATS user's password.")
    password_file: str | None = _f(None, "File holding the NATS user's password (used when the environment variable is unset).")
    token_env: str = _f("EDGE_AGENT_NATS_TOKEN", "Environment variable holding a NATS authentication token (the server's authorization { token }); unset or empty: no token.")
    token_file: str | None = _f(None, "File holding that token (used when the environment variable is unset).")
    creds_file: str | None = _f(None, "NATS user credentials file: the user's JWT and NKey seed, as nsc generate creds writes it (a server in operator mode; needs pip install 'nats-py[nkeys]').")
    tls: NatsTLSConfig = field(default_factory=NatsTLSConfig, metadata={"doc": "TLS to the NATS servers."})


@dataclass
class AgentConfig:
    agent_id: str = _f("edge-1", "This agent's id, used in topics and the default client id.")
    log_level: str = _f("INFO", "Logging level.", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    max_payload_bytes: int = _f(65536, "Largest MQTT payload accepted; larger ones are rejected as invalid.", min=16, max=256 * 1024 * 1024)
    mqtt: MQTTConfig = field(default_factory=MQTTConfig, metadata={"doc": "Broker connection."})
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()], metadata={"doc": "What to subscribe to and how to read it."})
    topics: TopicsConfig = field(default_factory=TopicsConfig, metadata={"doc": "Output topics."})
    models: ModelsConfig = field(default_factory=ModelsConfig, metadata={"doc": "Which model scores which sensor."})
    decision: DecisionConfig = field(default_factory=DecisionConfig, metadata={"doc": "Turning scores into anomalies."})
    learning: LearningConfig = field(default_factory=LearningConfig, metadata={"doc": "Learning on the device."})
    pipeline: PipelineConfig = field(default_factory=PipelineConfig, metadata={"doc": "Hand-over, batching and limits."})
    http: HTTPConfig = field(default_factory=HTTPConfig, metadata={"doc": "HTTP API."})
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig, metadata={"doc": "Home Assistant MQTT discovery."})
    nats: NatsConfig = field(default_factory=NatsConfig, metadata={"doc": "Scale-out on NATS JetStream: the bridge and the group of agents."})

