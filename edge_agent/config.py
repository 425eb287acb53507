"""Typed agent configuration: one dataclass per section, and the loader that validates it."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from edge_agent.durations import Duration
from edge_agent.features import DEFAULT_TRANSFORMS, parse_transform
from edge_agent.topics import TopicTemplate, sensor_id_parts, validate_filter, validate_source_pattern, validate_topic_name


def _f(default: Any, doc: str, **bounds: Any) -> Any:
    """A config field with a default, a description and optional bounds/choices."""
    meta = {"doc": doc, **bounds}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
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
    client_id: str | None = _f(None, "MQTT client id; stable across restarts so the session persists. Default: edge-agent-{agent_id}.")
    username: str | None = _f(None, "Broker user name.")
    password_env: str = _f("EDGE_AGENT_MQTT_PASSWORD", "Environment variable holding the broker password.")
    password_file: str | None = _f(None, "File holding the broker password (used when the environment variable is unset).")
    protocol: str = _f("5", "MQTT version: 5 (session expiry and receive maximum) or 3.1.1 (for brokers without MQTT 5; the session persists with clean_session false).", choices=["5", "3.1.1"])
    keepalive: int = _f(30, "Keepalive interval in seconds.", min=5, max=3600)
    session_expiry: int = _f(86400, "Seconds the broker keeps the agent's session (and its queued readings) while disconnected.", min=0, max=4294967295)
    receive_maximum: int = _f(512, "Readings the broker may send before the agent acknowledges any (backpressure window).", min=1, max=65535)
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
    threshold: float = _f(0.5, "Calibrated score at or above which a reading counts as anomalous.", min=0.0, max=1.0)
    k: int = _f(1, "Alert when at least k of the last n readings of a sensor are over the threshold.", min=1, max=1000)
    n: int = _f(1, "Window for the k-of-n rule.", min=1, max=1000)
    clear_threshold: float | None = _f(None, "Hysteresis: a sensor in alert stays anomalous while its score is at least this (at most threshold), so a score hovering at the threshold does not flap; null: none.", min=0.0, max=1.0)
    new_normal_after: Duration = _f(Duration.parse("1h"), "An anomalous episode that lasts this long (by the readings' own timestamps, else their arrival) is the sensor's new normal: one verdict with event new_normal goes to the alerts topic, the alert ends, and a sensor that learns refits on its recent readings, flagged ones included. A sensor scored by an assigned model keeps alerting while the change lasts. 0: never.", min=0.0, max=365 * 86400.0)


@dataclass
class LearningConfig:
    enabled: bool = _f(True, "Sensors that no models.assign pattern matches learn a model of their own from their first readings (else models.default scores them).")
    period: Duration = _f(Duration.parse("1h"), "How long a new sensor learns before it is scored (by its readings' own timestamps, else their arrival; its verdicts say learning until then), and at least 50 readings; it should cover the sensor's normal ups and downs.", min=0.0, max=365 * 86400.0)
    rows: int = _f(3600, "At most this many readings to learn from: a sensor that reports fast is scored once it has them, before period is over. With refits on, a model that knows fewer than refit_rows readings is refitted as soon as as many new ones have come, doubling what it knows.", min=50, max=1_000_000)
    refit_every: Duration = _f(Duration.parse("1h"), "Refit a learned model this often (by the readings' clocks) on its most recent refit_rows readings, to follow slow change; 0: never (the first model stays, except after a new normal).", min=0.0, max=365 * 86400.0)
    refit_rows: int = _f(7200, "Readings a refit learns from: the most recent ones, without those flagged (unless the model is stale, see stale_share).", min=50, max=1_000_000)
    stale_share: float = _f(0.5, "When more than this share of the readings since the last fit were flagged, the sensor has moved to a new normal: the refit learns from the flagged readings too (1: never).", min=0.0, max=1.0)
    features: list[str] = _f(list(DEFAULT_TRANSFORMS), "Streaming features a sensor learns on, per field: value, delta, repeats, mean:N, mean_dev:N, std:N, drift:N (N readings). drift:N is watched by the range check only. A sensor keeps the features it first learned on until its learned model is deleted from state_dir.")
    leave_out_outliers: bool = _f(False, "Before a fit, leave out the readings a first forest isolates far more easily than the rest, so that a spike or a stuck stretch while a sensor learns does not become its normal. It suits a sensor that may learn while something is already wrong; it costs false alarms on a sensor whose normal has rare, recurring extremes (a daily start and stop, bursty counts), which it leaves out too.")
    state_dir: str = _f("state", "Folder for learned models, kept across restarts (relative to the config file).")


@dataclass
class PipelineConfig:
    queue_size: int = _f(10000, "Readings handed over and waiting to be scored, at most.", min=1, max=10_000_000)
    max_batch: int = _f(512, "Readings scored together at most, when a queue has built up.", min=1, max=100_000)
    held_verdicts: int = _f(10000, "Verdicts held while the broker is unreachable; beyond this the oldest are dropped and counted.", min=0, max=10_000_000)
    max_sensors: int = _f(10000, "Distinct sensors tracked at most; readings of further sensors are rejected and counted.", min=1, max=10_000_000)
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
    sensor_series: int = _f(1000, "Sensors given /metrics series of their own (readings, anomalies, episodes, score, state, learning), the first to send; the readings of the rest count in sensor=\"_other\". Rendering costs about 0.1 ms a sensor.", min=0, max=10_000_000)


@dataclass
class HomeAssistantConfig:
    enabled: bool = _f(False, "Announce each sensor to Home Assistant by MQTT discovery: a binary_sensor for its anomaly state and a sensor for its score (retained).")
    discovery_prefix: str = _f("homeassistant", "Home Assistant's MQTT discovery prefix.")
    status_topic: str = _f("homeassistant/status", "Where Home Assistant announces itself; discovery is published again when it says online.")


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


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration: where, what was there, what belongs there."""

    path: str  # key path such as "mqtt.port" or "sources[0].fields[1]"; the file name for file-level problems
    value: str  # repr of the offending value, or a description where the value must not be shown
    expected: str
    origin: str | None = None  # the env variable or --set that supplied the value, when not the file

    def __str__(self) -> str:
        line = f"{self.path}: got {self.value}, expected {self.expected}"
        return f"{line} (set by {self.origin})" if self.origin else line


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` lists everything wrong with it, not just the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


# --------------------------------------------------------------------------- YAML


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    try:
        # YAML 1.2: "0755" is decimal 755, not octal; only 0o/0x prefixes change the base.
        return int(text, 0) if text[:2].lower() in ("0o", "0x") else int(text, 10)
    except ValueError as exc:
        raise yaml.constructor.ConstructorError(None, None, f"invalid integer {text!r}", node.start_mark) from exc


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node))
    special = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
    try:
        return special[text.lower()] if text.lower() in special else float(text)
    except ValueError as exc:
        raise yaml.constructor.ConstructorError(None, None, f"invalid number {text!r}", node.start_mark) from exc


# PyYAML speaks YAML 1.1, where `yes`/`on` are booleans, `1:30` is 90 and `2024-01-01` a date;
# these are replaced by the YAML 1.2 core schema so that a value means what it looks like.
_REPLACED_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float", "timestamp", "value")}
_YAML12_RESOLVERS = (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
)


def _yaml12_resolvers() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    table = {
        first: [(tag, regexp) for tag, regexp in entries if tag not in _REPLACED_TAGS]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for tag, pattern, firsts in _YAML12_RESOLVERS:
        for first in firsts:
            table.setdefault(first, []).append((tag, re.compile(pattern)))
    return table


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars that rejects duplicate keys (PyYAML keeps the last silently)."""

    yaml_implicit_resolvers = _yaml12_resolvers()
    yaml_constructors = {
        **yaml.SafeLoader.yaml_constructors,
        "tag:yaml.org,2002:int": _construct_int,
        "tag:yaml.org,2002:float": _construct_float,
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(where, "no such file", "a YAML config file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError([Problem(where, f"an unreadable file ({reason})", "a readable UTF-8 YAML file")]) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem(where, f"invalid YAML{at} ({reason})", "a valid YAML document")]) from None
    if data is None:  # an empty (or all-comments) file means all defaults
        return {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(where, f"{_kind(data)} at the top level", f"a mapping with keys {_key_list(AgentConfig)}")])
    return data


# --------------------------------------------------------------------------- types


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    """(X, True) for ``X | None``, (tp, False) otherwise."""
    if get_origin(tp) in (Union, types.UnionType):
        args = get_args(tp)
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return rest[0], True
    return tp, False


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _key_list(cls: type) -> str:
    return ", ".join(_fields(cls))


def _range_text(meta: Mapping[str, Any]) -> str:
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" of at least {low}"
    if high is not None:
        return f" of at most {high}"
    return ""


def _plural(tp: Any) -> str:
    inner, optional = _optional_inner(tp)
    text = {bool: "booleans", int: "integers", float: "numbers", str: "non-empty strings"}.get(inner, "mappings")
    return f"{text} or nulls" if optional else text


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    """What a valid value of this type looks like, e.g. 'an integer from 1 to 65535'."""
    inner, optional = _optional_inner(tp)
    origin = get_origin(inner)
    if inner is bool:
        text = "true or false"
    elif inner is Duration:
        low, high = meta.get("min"), meta.get("max")
        text = "a duration such as 90s, 30m, 1h, 2d or 1w (or seconds)"
        if low is not None and high is not None:
            text += f" from {Duration(low)} to {Duration(high)}"
    elif inner is int:
        text = "an integer" + _range_text(meta)
    elif inner is float:
        text = "a number" + _range_text(meta)
    elif inner is str:
        choices = meta.get("choices")
        text = "one of " + ", ".join(repr(c) for c in choices) if choices else "a non-empty string"
    elif origin is list:
        text = "a list of " + _plural(get_args(inner)[0])
    elif origin is dict:
        text = "a mapping of non-empty strings to " + _plural(get_args(inner)[1])
    elif dataclasses.is_dataclass(inner):
        text = f"a mapping with keys {_key_list(inner)}"
    else:
        raise TypeError(f"unsupported config type {tp!r}")
    return f"{text} or null" if optional else text


def _kind(value: Any) -> str:
    kinds = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------- validation

_INVALID = object()  # sentinel: this value was reported as a problem; the field keeps its default


def _unknown_key(cls: type, key: Any, path: str) -> Problem:
    names = list(_fields(cls))
    expected = f"one of the keys {', '.join(names)}"
    if cls.__name__ == "AgentConfig" and key == "partition":
        # The hash-broadcast scheme is gone: every agent read every reading (docs/operations.md#scale-out).
        return Problem(path, "the removed partition section", "nats.* instead: agents share sensors as a JetStream "
                       "consumer group (docs/operations.md#scale-out); remove partition.count and partition.index")
    if "password" in str(key).lower():
        expected += (
            "; the broker password is never read from the config file: put it in the environment"
            " variable named by mqtt.password_env (EDGE_AGENT_MQTT_PASSWORD by default) or in mqtt.password_file"
        )
    else:
        import difflib  # only when a key is unknown: ~0.2 MB the running agent does without

        close = difflib.get_close_matches(str(key), names, n=1)
        if close:
            expected += f" (did you mean {close[0]!r}?)"
    # The value is not shown: an unknown key may well hold a secret.
    return Problem(path, "an unknown key", expected)


def _in_range(value: float, meta: Mapping[str, Any]) -> bool:
    low, high = meta.get("min"), meta.get("max")
    return (low is None or value >= low) and (high is None or value <= high)


def _convert(raw: Any, tp: Any, meta: Mapping[str, Any], path: str, problems: list[Problem]) -> Any:
    """The typed value for ``raw``, or ``_INVALID`` after recording why it is not one."""
    inner, optional = _optional_inner(tp)
    origin = get_origin(inner)
    if raw is None:
        if optional:
            return None
        if dataclasses.is_dataclass(inner):
            raw = {}  # an empty section (all its keys commented out) means all defaults
        elif origin is dict:
            return {}

    def bad() -> Any:
        problems.append(Problem(path, _show(raw), _describe(tp, meta)))
        return _INVALID

    if dataclasses.is_dataclass(inner):
        return _convert_dataclass(inner, raw, path, problems) if isinstance(raw, dict) else bad()
    if origin is list:
        if not isinstance(raw, list):
            return bad()
        item_tp = get_args(inner)[0]
        items = [_convert(item, item_tp, {}, f"{path}[{i}]", problems) for i, item in enumerate(raw)]
        if dataclasses.is_dataclass(item_tp):
            # Keep the positions so that rules on the other items still run (and name the right index).
            return [item_tp() if item is _INVALID else item for item in items]
        return _INVALID if any(item is _INVALID for item in items) else items
    if origin is dict:
        if not isinstance(raw, dict):
            return bad()
        value_tp = get_args(inner)[1]
        result: dict[str, Any] = {}
        for key, value in raw.items():
            entry_path = f"{path}[{key!r}]"
            if not isinstance(key, str) or not key.strip():
                problems.append(Problem(entry_path, _show(key), "a non-empty string as key"))
                continue
            converted = _convert(value, value_tp, {}, entry_path, problems)
            if converted is not _INVALID:
                result[key] = converted
        return result if len(result) == len(raw) else _INVALID
    if inner is bool:
        return raw if isinstance(raw, bool) else bad()
    if inner is Duration:
        try:
            duration = Duration.parse(raw)
        except ValueError:
            return bad()
        return duration if _in_range(duration, meta) else bad()
    if inner is int:
        # 5.0 is refused too: a float where a count belongs is more likely a mistake than intent.
        ok = isinstance(raw, int) and not isinstance(raw, bool) and _in_range(raw, meta)
        return raw if ok else bad()
    if inner is float:
        ok = isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw)
        return float(raw) if ok and _in_range(raw, meta) else bad()
    if inner is str:
        ok = isinstance(raw, str) and bool(raw.strip()) and raw in meta.get("choices", (raw,))
        return raw if ok else bad()
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def _convert_dataclass(cls: type, raw: Mapping[Any, Any], path: str, problems: list[Problem]) -> Any:
    fields = _fields(cls)
    hints = get_type_hints(cls)
    problems.extend(_unknown_key(cls, key, _join(path, str(key))) for key in raw if key not in fields)
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        if name in raw:
            value = _convert(raw[name], hints[name], spec.metadata, _join(path, name), problems)
            if value is not _INVALID:
                values[name] = value
    return cls(**values)


# --------------------------------------------------------------------------- cross-field rules

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def _source_topic_error(topic: str) -> str | None:
    # The rule lives in topics.py, next to the matcher that will use the pattern at runtime.
    reason = validate_source_pattern(topic)
    if reason is None:
        return None
    return f"a topic filter or a template with one whole-level {{sensor}}, e.g. 'sensors/+' or 'tele/{{sensor}}/SENSOR' ({reason})"


def _output_topic_error(text: str, per_sensor: bool) -> str | None:
    allowed = ("agent_id", "sensor_id") if per_sensor else ("agent_id",)
    usage = (
        "a topic template using only the placeholders {agent_id} and {sensor_id}"
        if per_sensor
        else "a topic template using only the placeholder {agent_id} (no sensor is known there)"
    )
    try:
        template = TopicTemplate(text)
    except ValueError as exc:
        return f"{usage} ({exc})"
    if any(name not in allowed for name in template.names):
        return usage
    if per_sensor and "sensor_id" not in template.names:
        return "a topic template containing {sensor_id}, so that each sensor gets its own topic"
    try:
        # Sample values: a wildcard or other defect in the literal parts shows up when rendered.
        template.render(**{name: "x" for name in template.names})
    except ValueError as exc:
        return f"a publishable topic ({exc})"
    return None


def _check_fleet_source(where: str, source: SourceConfig, clean: Callable[..., bool], add: Callable[[str, Any, str], None]) -> None:
    """The rules of a source's fleet keys: optional fields, rates, each, sensor_id."""
    required = source.fields or []
    optional = source.optional_fields
    if optional is not None and clean(f"{where}.optional_fields"):
        if not optional:
            add(f"{where}.optional_fields", optional, "at least one field, or leave it unset")
        elif len(set(optional)) != len(optional):
            add(f"{where}.optional_fields", optional, "each field once")
        for j, name in enumerate(optional):
            if "" in name.split("."):
                add(f"{where}.optional_fields[{j}]", name, "a dotted path without empty parts, e.g. ENERGY.Power")
            elif name in required:
                add(f"{where}.optional_fields[{j}]", name, "a field not also in fields (it is required there)")
    if source.rates is not None and clean(f"{where}.rates"):
        known = set(required) | set(optional or [])
        for j, name in enumerate(source.rates):
            if name not in known:
                add(f"{where}.rates[{j}]", name, f"one of the source's fields or optional_fields ({', '.join(sorted(known)) or 'none set'})")
    for j, text in enumerate(source.exclude or []):
        reason = validate_filter(text) if clean(f"{where}.exclude") else None
        if reason:
            add(f"{where}.exclude[{j}]", text, f"an MQTT topic filter ({reason})")
    if source.each_in is not None and source.each is None and clean(f"{where}.each_in"):
        add(f"{where}.each_in", source.each_in, "unset, or set together with each")
    if source.sensor_id is not None and clean(f"{where}.sensor_id"):
        try:
            parts = sensor_id_parts(source.sensor_id)
        except ValueError as exc:
            add(f"{where}.sensor_id", source.sensor_id, f"a sensor id template ({exc})")
        else:
            if source.each is None and any(n == "key" or n.startswith("item.") for n in parts[1::2]):
                add(f"{where}.sensor_id", source.sensor_id, "{key} and {item.PATH} only together with each")


def _check_rules(cfg: AgentConfig, problems: list[Problem]) -> None:
    """Rules spanning fields; a rule is skipped when a field it reads was already reported."""
    reported = [p.path for p in problems]

    def clean(*paths: str) -> bool:
        return not any(r == p or r.startswith((p + ".", p + "[")) for r in reported for p in paths)

    def item_clean(item: str, key: str) -> bool:
        return item not in reported and clean(f"{item}.{key}")

    def add(path: str, value: Any, expected: str) -> None:
        problems.append(Problem(path, _show(value), expected))

    if clean("agent_id") and any(c in cfg.agent_id for c in "/+#\0"):
        add("agent_id", cfg.agent_id, "an id without '/', '+' or '#' (it becomes a topic level)")

    mqtt = cfg.mqtt
    if clean("mqtt.reconnect_min_delay", "mqtt.reconnect_max_delay") and mqtt.reconnect_min_delay > mqtt.reconnect_max_delay:
        add("mqtt.reconnect_min_delay", mqtt.reconnect_min_delay, f"at most mqtt.reconnect_max_delay ({mqtt.reconnect_max_delay})")
    tls = mqtt.tls
    if clean("mqtt.tls.cert_file", "mqtt.tls.key_file") and (tls.cert_file is None) != (tls.key_file is None):
        missing, present = ("key_file", "cert_file") if tls.key_file is None else ("cert_file", "key_file")
        add(f"mqtt.tls.{missing}", None, f"a file as well, since mqtt.tls.{present} is set (mutual TLS needs both)")

    if "sources" not in reported:
        if not cfg.sources:
            add("sources", cfg.sources, "at least one source")
        first_use: dict[str, int] = {}
        for i, source in enumerate(cfg.sources):
            if item_clean(f"sources[{i}]", "topic"):
                reason = _source_topic_error(source.topic)
                if reason:
                    add(f"sources[{i}].topic", source.topic, reason)
                elif source.topic in first_use:
                    add(f"sources[{i}].topic", source.topic, f"a topic not already used by sources[{first_use[source.topic]}]")
                first_use.setdefault(source.topic, i)
            if source.fields is not None and item_clean(f"sources[{i}]", "fields"):
                if not source.fields:
                    add(f"sources[{i}].fields", source.fields, "at least one field, or null for a bare number / 'value'")
                elif len(set(source.fields)) != len(source.fields):
                    add(f"sources[{i}].fields", source.fields, "each field once")
                for j, name in enumerate(source.fields):
                    if "" in name.split("."):
                        add(f"sources[{i}].fields[{j}]", name, "a dotted path without empty parts, e.g. DS18B20.Temperature")
            _check_fleet_source(f"sources[{i}]", source, clean, add)

    for name, per_sensor in (("verdicts", True), ("alerts", True), ("errors", False), ("status", False)):
        template = getattr(cfg.topics, name)
        reason = _output_topic_error(template, per_sensor) if clean(f"topics.{name}") else None
        if reason:
            add(f"topics.{name}", template, reason)

    for key in ("pinned_sha256", "pinned_manifest_sha256"):
        for model, digest in getattr(cfg.models, key).items():
            if not _SHA256.match(digest):
                add(f"models.{key}[{model!r}]", digest, "a sha256 digest of 64 hexadecimal characters")

    if clean("learning.features"):
        features = cfg.learning.features
        if not features:
            add("learning.features", features, "at least one feature, e.g. [value, delta]")
        elif len(set(features)) != len(features):
            add("learning.features", features, "each feature once")
        for j, name in enumerate(features):
            try:
                parse_transform(name)
            except ValueError as e:
                add(f"learning.features[{j}]", name, f"a feature transform such as mean:30 ({e})")

    if clean("decision.k", "decision.n") and cfg.decision.k > cfg.decision.n:
        add("decision.k", cfg.decision.k, f"at most decision.n ({cfg.decision.n})")
    clear = cfg.decision.clear_threshold
    if clean("decision.clear_threshold", "decision.threshold") and clear is not None and clear > cfg.decision.threshold:
        add("decision.clear_threshold", clear, f"at most decision.threshold ({cfg.decision.threshold})")

    ha = cfg.homeassistant
    if clean("homeassistant.discovery_prefix") and (validate_topic_name(ha.discovery_prefix) or "{" in ha.discovery_prefix):
        add("homeassistant.discovery_prefix", ha.discovery_prefix, "a topic prefix without wildcards or placeholders, e.g. homeassistant")
    if clean("homeassistant.status_topic") and validate_topic_name(ha.status_topic):
        add("homeassistant.status_topic", ha.status_topic, "a topic name without wildcards, e.g. homeassistant/status")

    _check_nats(cfg.nats, clean, add)


_NATS_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NATS_GROUP = re.compile(r"[A-Za-z0-9_/=-]{1,16}")
_NATS_SUBJECT = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def _check_nats(nats: NatsConfig, clean: Callable[..., bool], add: Callable[[str, Any, str], None]) -> None:
    for key in ("stream", "bucket", "models_bucket"):
        if clean(f"nats.{key}") and not _NATS_NAME.fullmatch(getattr(nats, key)):
            add(f"nats.{key}", getattr(nats, key), "a name of letters, digits, - and _ (at most 64)")
    if clean("nats.group") and not _NATS_GROUP.fullmatch(nats.group):
        add("nats.group", nats.group, "at most 16 letters, digits, -, _, / or =")
    if clean("nats.subject") and not _NATS_SUBJECT.fullmatch(nats.subject):
        add("nats.subject", nats.subject, "a subject without wildcards or spaces, e.g. readings")
    for i, url in enumerate(nats.servers):
        if not re.fullmatch(r"(nats|tls|ws|wss)://[^\s/]+", url):
            add(f"nats.servers[{i}]", url, "a URL such as nats://host:4222")
    if clean("nats.servers") and not nats.servers:
        add("nats.servers", nats.servers, "at least one server URL")


def parse_config(data: Mapping[str, Any]) -> AgentConfig:
    """Validate an already-parsed configuration mapping; raise ConfigError listing every problem."""
    return _validated(data, [], {})


def _validated(data: Mapping[str, Any], problems: list[Problem], origins: Mapping[str, str]) -> AgentConfig:
    cfg = _convert(dict(data), AgentConfig, {}, "", problems)
    _check_rules(cfg, problems)
    if problems:
        raise ConfigError([_with_origin(p, origins) for p in problems])
    return cfg


def _with_origin(problem: Problem, origins: Mapping[str, str]) -> Problem:
    if problem.origin is not None:
        return problem
    covering = [p for p in origins if problem.path == p or problem.path.startswith((p + ".", p + "["))]
    if not covering:
        return problem
    return dataclasses.replace(problem, origin=origins[max(covering, key=len)])


# --------------------------------------------------------------------------- overrides

_ENV_PREFIX = "EDGE_AGENT__"
_NULL_WORDS = ("", "~", "null", "Null", "NULL")


def _to_raw(value: Any) -> Any:
    """A default value as the plain data YAML would have produced."""
    if isinstance(value, Duration):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_to_raw(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_raw(item) for key, item in value.items()}
    return value


def _field_default(spec: dataclasses.Field[Any]) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return _to_raw(spec.default_factory())
    return _to_raw(spec.default)


def _parse_value(text: str, tp: Any, path: str) -> tuple[Any, Problem | None]:
    """An override's text as a YAML scalar or flow collection, read for the type it is going to."""
    inner, _ = _optional_inner(tp)
    try:
        value = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        if inner is str:
            return text.strip(), None
        reason = getattr(exc, "problem", None) or "invalid YAML"
        return None, Problem(path, _show(text), f"{_describe(tp, {})} written as YAML ({reason})")
    # A shell user writing agent_id=123, topic={sensor}/x or topic=# means the string, not a
    # number, a mapping or a comment; only an explicit null (or nothing) clears the key.
    if inner is str and not isinstance(value, str) and text.strip() not in _NULL_WORDS:
        return text.strip(), None
    return value, None


def _apply_override(
    data: dict[str, Any], parts: Sequence[str], text: str, *, fold_case: bool
) -> tuple[str, Problem | None]:
    """Set the value at ``parts`` (field names, list indexes, a trailing dict key) in the raw ``data``.

    Returns the key path set, and the problem when the path or the value is unusable. Missing
    sections and lists are filled in from the defaults first, so ``sources.0.topic`` works
    without any ``sources`` in the file.
    """
    holder: Any = {"": data}
    key: Any = ""
    tp: Any = AgentConfig
    path = ""
    for i, part in enumerate(parts):
        current = holder[key]
        inner, _ = _optional_inner(tp)
        origin = get_origin(inner)
        if dataclasses.is_dataclass(inner):
            if current is None:
                current = holder[key] = {}
            if not isinstance(current, dict):
                return path, None  # the section itself is malformed; validation reports it
            name = part.lower() if fold_case else part
            fields = _fields(inner)
            if name not in fields:
                return _join(path, name), _unknown_key(inner, name, _join(path, name))
            if name not in current:
                current[name] = _field_default(fields[name])
            holder, key, tp, path = current, name, get_type_hints(inner)[name], _join(path, name)
        elif origin is list:
            if current is None:
                current = holder[key] = []
            if not isinstance(current, list):
                return path, None
            if not part.isdigit() or int(part) > len(current):
                expected = f"a list index from 0 to {len(current)} ({len(current)} appends an item)"
                return path, Problem(f"{path}[{part}]", _show(part), expected)
            index = int(part)
            if index == len(current):
                current.append(None)
            holder, key, tp, path = current, index, get_args(inner)[0], f"{path}[{index}]"
        elif origin is dict:
            if current is None:
                current = holder[key] = {}
            if not isinstance(current, dict):
                return path, None
            entry = ".".join(parts[i:])  # dict keys (sensor globs) may themselves contain dots
            holder, key, tp, path = current, entry, get_args(inner)[1], f"{path}[{entry!r}]"
            break
        else:
            return path, Problem(_join(path, ".".join(parts[i:])), "a key below a single value", f"a path ending at {path}")
    value, problem = _parse_value(text, tp, path)
    if problem is None:
        holder[key] = value
    return path, problem


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, list[str], str]]:
    """(variable, path parts, text) for each EDGE_AGENT__SECTION__KEY variable, shorter paths first."""
    found = [
        (name, name[len(_ENV_PREFIX):].split("__"), text)
        for name, text in env.items()
        if name.upper().startswith(_ENV_PREFIX)
    ]
    # Sorted so that EDGE_AGENT__SOURCES applies before EDGE_AGENT__SOURCES__0__TOPIC refines it.
    return sorted(found, key=lambda item: item[0].upper())


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Read, override and validate the agent configuration; raise ConfigError listing every problem.

    Precedence, lowest first: dataclass defaults < the YAML file at ``path`` (None: no file) <
    ``EDGE_AGENT__SECTION__KEY`` environment variables (``__`` separates levels, names are
    case-insensitive, list items by index: ``EDGE_AGENT__SOURCES__0__TOPIC``) < ``overrides``
    (``--set section.key=value``, later ones win). Override values are YAML scalars or flow
    collections (``sources=[{topic: "tele/{sensor}/SENSOR"}]``); for string keys the text is
    taken literally unless it is quoted or null. ``env`` defaults to ``os.environ``.
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    environment = os.environ if env is None else env
    problems: list[Problem] = []
    origins: dict[str, str] = {}

    def apply(parts: Sequence[str], text: str, origin: str, fold_case: bool) -> None:
        set_path, problem = _apply_override(data, parts, text, fold_case=fold_case)
        if problem is not None:
            problems.append(dataclasses.replace(problem, origin=origin))
            return
        for earlier in [p for p in origins if p.startswith((set_path + ".", set_path + "["))]:
            del origins[earlier]  # replaced wholesale by this override
        origins[set_path] = origin

    for name, parts, text in _env_overrides(environment):
        apply(parts, text, name, fold_case=True)
    for item in overrides:
        dotted, equals, text = item.partition("=")
        if not equals or not dotted.strip():
            problems.append(Problem("--set", _show(dotted), "KEY=VALUE with a dotted key, e.g. mqtt.port=1884"))
            continue
        # Only the key is named as origin: the value could be a secret typed in the wrong place.
        apply(dotted.strip().split("."), text, f"--set {dotted.strip()}", fold_case=False)
    return _validated(data, problems, origins)


# --------------------------------------------------------------------------- helpers for other modules


def mqtt_password(cfg: AgentConfig, env: Mapping[str, str]) -> str | None:
    """The broker password: the variable named by mqtt.password_env, else mqtt.password_file's content.

    An empty variable counts as unset, an empty file as no password. The value is never logged
    and never part of an error message.
    """
    from_env = env.get(cfg.mqtt.password_env)
    if from_env:
        return from_env
    if cfg.mqtt.password_file is None:
        return None
    try:
        content = Path(cfg.mqtt.password_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError([Problem("mqtt.password_file", _show(cfg.mqtt.password_file), f"a readable file ({reason})")]) from None
    return content or None


_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


def http_token(cfg: AgentConfig, env: Mapping[str, str]) -> str | None:
    """The bearer token /predict requires: the variable named by http.token_env, else http.token_file's content.

    None means no token is required. Like the broker password, it is never logged.
    """
    from_env = env.get(cfg.http.token_env)
    if from_env:
        token, where, source = from_env, "http.token_env", f"the variable {cfg.http.token_env}"
    elif cfg.http.token_file is None:
        return None
    else:
        where, source = "http.token_file", _show(cfg.http.token_file)
        try:
            token = Path(cfg.http.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError([Problem(where, source, f"a readable file ({reason})")]) from None
        if not token:
            # An empty secret file is a deployment mistake, not a wish to leave /predict open.
            raise ConfigError([Problem(where, source, "a file holding the token (it is empty)")])
    if not _TOKEN_CHARS.fullmatch(token):
        # The token itself is never shown, only where it came from.
        raise ConfigError([Problem(where, source, "a token of printable ASCII characters without spaces (it goes in an HTTP header)")])
    return token


def client_id(cfg: AgentConfig) -> str:
    """The MQTT client id: mqtt.client_id, or one derived from agent_id (stable across restarts)."""
    return cfg.mqtt.client_id or f"edge-agent-{cfg.agent_id}"


def _type_name(tp: Any) -> str:
    inner, optional = _optional_inner(tp)
    origin = get_origin(inner)
    if origin is list:
        item = get_args(inner)[0]
        name = "list of mappings" if dataclasses.is_dataclass(item) else f"list of {_type_name(item)}s"
    elif origin is dict:
        name = f"map of {_type_name(get_args(inner)[0])} to {_type_name(get_args(inner)[1])}"
    else:
        name = {bool: "bool", int: "int", float: "float", str: "string", Duration: "duration"}.get(inner, "mapping")
    return f"{name} or null" if optional else name


def _reference_rows(cls: type, prefix: str) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    hints = get_type_hints(cls)
    for name, spec in _fields(cls).items():
        tp = hints[name]
        path = _join(prefix, name)
        inner, _ = _optional_inner(tp)
        if dataclasses.is_dataclass(inner):
            rows.extend(_reference_rows(inner, path))
            continue
        doc = spec.metadata.get("doc", "")
        if spec.metadata.get("choices"):
            doc += " One of: " + ", ".join(spec.metadata["choices"]) + "."
        elif _range_text(spec.metadata):
            doc += f" Range: {_range_text(spec.metadata).strip()}."
        default = json.dumps(_field_default(spec))
        rows.append((path, _type_name(tp), default, doc))
        item = get_args(inner)[0] if get_origin(inner) is list else None
        if dataclasses.is_dataclass(item):
            rows.extend(_reference_rows(item, f"{path}[]"))
    return rows


def config_reference_markdown() -> str:
    """A markdown table of every configuration key (path, type, default, description), for docs/configuration.md."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for path, type_name, default, doc in _reference_rows(AgentConfig, ""):
        lines.append(f"| `{cell(path)}` | {cell(type_name)} | `{cell(default)}` | {cell(doc)} |")
    return "\n".join(lines) + "\n"


_REFERENCE_PAGE_HEAD = """\
# Configuration

<!-- Generated by `edge-agent config-reference --page > docs/configuration.md`: do not edit by hand. -->

Every key is optional. Precedence, lowest first: the defaults below < the YAML file
(`--config config.yaml`) < `EDGE_AGENT__SECTION__KEY` environment variables (`__` separates
levels, names are case-insensitive, list items by index: `EDGE_AGENT__SOURCES__0__TOPIC`) <
`--set section.key=value` (later ones win). Unknown keys are errors. An invalid config exits
with status 2 and one line per problem, naming the key path, the value and what was expected;
`edge-agent check-config --config config.yaml` validates it and loads the models, exiting
0, 1 (a model is not valid) or 2 (the config is not). Secrets are never read from the YAML: the
broker password comes from `EDGE_AGENT_MQTT_PASSWORD` (`mqtt.password_env`) or
`mqtt.password_file`, the HTTP token from `EDGE_AGENT_HTTP_TOKEN` (`http.token_env`) or
`http.token_file`.

"""


def config_reference_page() -> str:
    """docs/configuration.md: how the config is read, then the reference table (``edge-agent config-reference --page``)."""
    return _REFERENCE_PAGE_HEAD + config_reference_markdown()
