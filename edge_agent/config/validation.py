"""From raw YAML data to a typed AgentConfig: each value converted and checked, then the rules spanning fields."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, get_args, get_origin, get_type_hints

from edge_agent.config.errors import ConfigError, Problem
from edge_agent.config.fieldtypes import (
    dataclass_fields,
    describe,
    is_section,
    join_path,
    optional_inner,
    show,
)
from edge_agent.config.schema import AgentConfig, NatsConfig, SourceConfig
from edge_agent.core.durations import Duration
from edge_agent.core.features import parse_transform
from edge_agent.mqtt.topics import (
    TopicTemplate,
    sensor_id_parts,
    validate_filter,
    validate_source_pattern,
    validate_topic_name,
)

_INVALID = object()  # sentinel: this value was reported as a problem; the field keeps its default


def unknown_key(cls: type, key: Any, path: str) -> Problem:
    names = list(dataclass_fields(cls))
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


def convert(raw: Any, tp: Any, meta: Mapping[str, Any], path: str, problems: list[Problem]) -> Any:
    """The typed value for ``raw``, or ``_INVALID`` after recording why it is not one."""
    inner, optional = optional_inner(tp)
    origin = get_origin(inner)
    if raw is None:
        if optional:
            return None
        if is_section(inner):
            raw = {}  # an empty section (all its keys commented out) means all defaults
        elif origin is dict:
            return {}

    def bad() -> Any:
        problems.append(Problem(path, show(raw), describe(tp, meta)))
        return _INVALID

    if is_section(inner):
        return _convert_dataclass(inner, raw, path, problems) if isinstance(raw, dict) else bad()
    if origin is list:
        if not isinstance(raw, list):
            return bad()
        item_tp = get_args(inner)[0]
        items = [convert(item, item_tp, {}, f"{path}[{i}]", problems) for i, item in enumerate(raw)]
        if is_section(item_tp):
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
                problems.append(Problem(entry_path, show(key), "a non-empty string as key"))
                continue
            converted = convert(value, value_tp, {}, entry_path, problems)
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
    fields = dataclass_fields(cls)
    hints = get_type_hints(cls)
    problems.extend(unknown_key(cls, key, join_path(path, str(key))) for key in raw if key not in fields)
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        if name in raw:
            value = convert(raw[name], hints[name], spec.metadata, join_path(path, name), problems)
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
        template.render(**dict.fromkeys(template.names, "x"))
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
        problems.append(Problem(path, show(value), expected))

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
    tls = nats.tls
    if clean("nats.tls.cert_file", "nats.tls.key_file") and (tls.cert_file is None) != (tls.key_file is None):
        missing, present = ("key_file", "cert_file") if tls.key_file is None else ("cert_file", "key_file")
        add(f"nats.tls.{missing}", None, f"a file as well, since nats.tls.{present} is set (mutual TLS needs both)")
    # One kind of authentication: the server takes one, and a second one set would be silently ignored.
    if nats.creds_file is not None and nats.user is not None and clean("nats.creds_file", "nats.user"):
        add("nats.creds_file", nats.creds_file, "unset, since nats.user is set: one kind of NATS authentication at a time")
    if nats.token_file is not None and clean("nats.token_file"):
        other = "nats.user" if nats.user is not None else "nats.creds_file" if nats.creds_file is not None else None
        if other:
            add("nats.token_file", nats.token_file, f"unset, since {other} is set: one kind of NATS authentication at a time")
    if nats.password_file is not None and nats.user is None and clean("nats.password_file"):
        add("nats.password_file", nats.password_file, "set together with nats.user (the password is that user's)")


def parse_config(data: Mapping[str, Any]) -> AgentConfig:
    """Validate an already-parsed configuration mapping; raise ConfigError listing every problem."""
    return validated(data, [], {})


def validated(data: Mapping[str, Any], problems: list[Problem], origins: Mapping[str, str]) -> AgentConfig:
    cfg = convert(dict(data), AgentConfig, {}, "", problems)
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

