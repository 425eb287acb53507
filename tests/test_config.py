"""Tests for the config loader: defaults, the repo config, validation problems, overrides, secrets."""

from __future__ import annotations

import dataclasses
import fnmatch
import textwrap
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from edge_agent.config import (
    AgentConfig,
    ConfigError,
    MQTTConfig,
    Problem,
    SourceConfig,
    client_id,
    config_reference_markdown,
    load_config,
    mqtt_password,
    parse_config,
)

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path | None, overrides: tuple[str, ...] = (), env: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides, env={} if env is None else env)
    return caught.value.problems


def only_problem(path: Path | None, overrides: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Problem:
    problems = problems_of(path, overrides, env)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


# --------------------------------------------------------------------------- defaults and the repo config


def test_no_file_gives_all_defaults() -> None:
    assert load_config(None, env={}) == AgentConfig()


def test_empty_file_and_empty_sections_give_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing but comments\n"), env={}) == AgentConfig()
    assert load_config(write(tmp_path, "mqtt:\n  tls:\nmodels:\n  assign:\n"), env={}) == AgentConfig()


def test_repo_config_loads_and_runs_against_a_local_broker() -> None:
    cfg = load_config(REPO_CONFIG, env={})
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("localhost", 1883)
    assert (cfg.http.host, cfg.http.port, cfg.http.enabled) == ("0.0.0.0", 8000, True)
    assert (cfg.models.dir, cfg.models.default) == ("models", "default")
    assert [s.topic for s in cfg.sources] == ["sensors/+"]
    assert cfg.mqtt.tls.enabled is False


@pytest.mark.parametrize("kind", ["temperature", "humidity", "vibration", "current"])
def test_repo_config_assigns_each_simulator_kind_its_model(kind: str) -> None:
    assign = load_config(REPO_CONFIG, env={}).models.assign
    sensor = f"{kind}-3"
    first_match = next(model for pattern, model in assign.items() if fnmatch.fnmatchcase(sensor, pattern))
    assert first_match == kind


def test_client_id_defaults_to_agent_id_and_honours_explicit_one() -> None:
    cfg = load_config(None, ["agent_id=pi-kitchen"], env={})
    assert client_id(cfg) == "edge-agent-pi-kitchen"
    assert client_id(load_config(None, ["mqtt.client_id=fixed"], env={})) == "fixed"


# --------------------------------------------------------------------------- bad values

BAD_VALUES = [
    # (yaml, path, got, expected substring)
    ("mqtt: {port: 70000}", "mqtt.port", "70000", "an integer from 1 to 65535"),
    ("mqtt: {port: 0}", "mqtt.port", "0", "an integer from 1 to 65535"),
    ("mqtt: {port: '1883'}", "mqtt.port", "'1883'", "an integer"),
    ("mqtt: {port: true}", "mqtt.port", "True", "an integer"),
    ("mqtt: {port: 1883.0}", "mqtt.port", "1883.0", "an integer"),
    ("mqtt: {keepalive: 1.5}", "mqtt.keepalive", "1.5", "an integer from 5 to 3600"),
    ("mqtt: {port: 0755x}", "mqtt.port", "'0755x'", "an integer"),
    ("mqtt: {reconnect_min_delay: fast}", "mqtt.reconnect_min_delay", "'fast'", "a number from 0.1 to 3600"),
    ("mqtt: {reconnect_min_delay: .nan}", "mqtt.reconnect_min_delay", "nan", "a number"),
    ("mqtt: {reconnect_max_delay: false}", "mqtt.reconnect_max_delay", "False", "a number"),
    ("decision: {threshold: 1.5}", "decision.threshold", "1.5", "a number from 0.0 to 1.0"),
    ("decision: {k: 0}", "decision.k", "0", "an integer from 1 to 1000"),
    ("mqtt: {tls: {enabled: yes}}", "mqtt.tls.enabled", "'yes'", "true or false"),
    ("mqtt: {tls: {enabled: 'true'}}", "mqtt.tls.enabled", "'true'", "true or false"),
    ("mqtt: {tls: {enabled: 1}}", "mqtt.tls.enabled", "1", "true or false"),
    ("http: {enabled: on}", "http.enabled", "'on'", "true or false"),
    ("log_level: VERBOSE", "log_level", "'VERBOSE'", "one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'"),
    ("agent_id: ''", "agent_id", "''", "a non-empty string"),
    ("agent_id: 42", "agent_id", "42", "a non-empty string"),
    ("mqtt: {host: [a, b]}", "mqtt.host", "['a', 'b']", "a non-empty string"),
    ("mqtt: {client_id: 7}", "mqtt.client_id", "7", "a non-empty string or null"),
    ("mqtt: 5", "mqtt", "5", "a mapping with keys host, port"),
    ("sources: sensors/+", "sources", "'sensors/+'", "a list of mappings"),
    ("sources: [sensors/+]", "sources[0]", "'sensors/+'", "a mapping with keys topic, fields, ts_field"),
    ("sources: [{topic: a/+, fields: temperature}]", "sources[0].fields", "'temperature'", "a list of non-empty strings or null"),
    ("sources: [{topic: a/+, fields: [t, 3]}]", "sources[0].fields[1]", "3", "a non-empty string"),
    ("models: {assign: [a, b]}", "models.assign", "['a', 'b']", "a mapping of non-empty strings"),
    ("models: {assign: {'temp-*': ''}}", "models.assign['temp-*']", "''", "a non-empty string"),
    ("models: {assign: {'temp-*': null}}", "models.assign['temp-*']", "None", "a non-empty string"),
    ("http: {port: -1}", "http.port", "-1", "an integer from 0 to 65535"),
    ("pipeline: {queue_size: 0}", "pipeline.queue_size", "0", "an integer from 1 to 10000000"),
]


@pytest.mark.parametrize(("text", "path", "got", "expected"), BAD_VALUES, ids=[row[1] + "=" + row[2] for row in BAD_VALUES])
def test_bad_value_is_reported_with_path_value_and_expectation(
    tmp_path: Path, text: str, path: str, got: str, expected: str
) -> None:
    problem = only_problem(write(tmp_path, text + "\n"))
    assert (problem.path, problem.value) == (path, got)
    assert expected in problem.expected
    assert str(problem).startswith(f"{path}: got {got}, expected ")


def test_error_message_format_is_one_line_per_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  port: 70000\nhttp:\n  port: 70000\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).splitlines() == [
        "mqtt.port: got 70000, expected an integer from 1 to 65535",
        "http.port: got 70000, expected an integer from 0 to 65535",
    ]


def test_good_values_are_converted(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """
            mqtt: {port: 0o1750, reconnect_min_delay: 2, tls: {enabled: true, cert_file: c.pem, key_file: c.key}}
            decision: {threshold: 1, k: 2, n: 5}
            sources: [{topic: "tele/{sensor}/SENSOR", fields: [DS18B20.Temperature], ts_field: Time}]
            """,
        ),
        env={},
    )
    assert cfg.mqtt.port == 1000
    assert isinstance(cfg.mqtt.reconnect_min_delay, float) and cfg.mqtt.reconnect_min_delay == 2.0
    assert isinstance(cfg.decision.threshold, float)
    assert cfg.mqtt.tls.enabled is True
    assert cfg.sources == [SourceConfig("tele/{sensor}/SENSOR", ["DS18B20.Temperature"], "Time")]


def test_leading_zero_is_decimal_not_octal(tmp_path: Path) -> None:
    # YAML 1.1 would read 0755 as octal 493; the agent reads YAML 1.2.
    assert load_config(write(tmp_path, "pipeline: {max_batch: 0755}\n"), env={}).pipeline.max_batch == 755


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        agent_id: a/b
        mqtt:
          port: 70000
          hots: broker
          tls: {enabled: maybe}
        sources:
          - topic: a/#/b
        decision: {k: 3, n: 2}
        """,
    )
    paths = sorted(p.path for p in problems_of(path))
    assert paths == sorted(
        ["agent_id", "mqtt.port", "mqtt.hots", "mqtt.tls.enabled", "sources[0].topic", "decision.k"]
    )


# --------------------------------------------------------------------------- unknown keys

UNKNOWN_KEYS = [
    ("agent: x", "agent", "agent_id"),
    ("mqtt: {hots: x}", "mqtt.hots", "host"),
    ("mqtt: {tls: {enable: true}}", "mqtt.tls.enable", "enabled"),
    ("sources: [{topik: a/+}]", "sources[0].topik", "topic"),
    ("topics: {verdict: x}", "topics.verdict", "verdicts"),
    ("models: {assing: {}}", "models.assing", "assign"),
    ("decision: {treshold: 0.4}", "decision.treshold", "threshold"),
    ("pipeline: {queue: 5}", "pipeline.queue", None),
    ("http: {prot: 80}", "http.prot", "port"),
]


@pytest.mark.parametrize(("text", "path", "suggestion"), UNKNOWN_KEYS, ids=[row[1] for row in UNKNOWN_KEYS])
def test_unknown_key_names_path_and_valid_keys(tmp_path: Path, text: str, path: str, suggestion: str | None) -> None:
    problem = only_problem(write(tmp_path, text + "\n"))
    assert problem.path == path
    assert problem.value == "an unknown key"
    section = path.rsplit(".", 1)[0] if "." in path else ""
    valid = _section_keys(section)
    assert all(key in problem.expected for key in valid)
    if suggestion is not None:
        assert f"did you mean {suggestion!r}?" in problem.expected


def _section_keys(section: str) -> list[str]:
    """Field names of the dataclass at a dotted section path (list items: 'sources[0]')."""
    cls: Any = AgentConfig
    for part in filter(None, section.split(".")):
        name = part.split("[")[0]
        tp = get_type_hints(cls)[name]
        cls = tp.__args__[0] if "[" in part else tp
    return [f.name for f in dataclasses.fields(cls)]


# --------------------------------------------------------------------------- file-level problems


@pytest.mark.parametrize(
    ("text", "got_part"),
    [
        ("mqtt:\n  port: 1883\n port: 2\n", "invalid YAML at line 3"),
        ("mqtt: {port: 1883\n", "invalid YAML"),
        ("- mqtt\n- http\n", "a list at the top level"),
        ("just a string\n", "a string at the top level"),
        ("mqtt:\n  port: 1\n  port: 2\n", "duplicate key 'port'"),
    ],
)
def test_unusable_file_names_the_file(tmp_path: Path, text: str, got_part: str) -> None:
    path = write(tmp_path, text)
    problem = only_problem(path)
    assert problem.path == str(path)
    assert got_part in problem.value


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    problem = only_problem(missing)
    assert problem.path == str(missing)
    assert "no such file" in problem.value


# --------------------------------------------------------------------------- --set overrides


@pytest.mark.parametrize(
    ("override", "read", "expected"),
    [
        ("mqtt.port=1884", lambda c: c.mqtt.port, 1884),
        ("mqtt.tls.enabled=true", lambda c: c.mqtt.tls.enabled, True),
        ("decision.threshold=0.75", lambda c: c.decision.threshold, 0.75),
        ("agent_id=123", lambda c: c.agent_id, "123"),  # a string key takes the text as typed
        ("mqtt.host=10.0.0.1", lambda c: c.mqtt.host, "10.0.0.1"),
        ("mqtt.username=", lambda c: c.mqtt.username, None),
        ("models.default=null", lambda c: c.models.default, None),
        ("sources.0.topic={sensor}/data", lambda c: c.sources[0].topic, "{sensor}/data"),
        ('sources=[{topic: "tele/{sensor}/SENSOR"}]', lambda c: c.sources, [SourceConfig("tele/{sensor}/SENSOR")]),
        ('models.assign={"temp-*": temperature}', lambda c: c.models.assign, {"temp-*": "temperature"}),
        ("models.assign.room.*=climate", lambda c: c.models.assign, {"room.*": "climate"}),
        ("sources.0.fields=[temperature, humidity]", lambda c: c.sources[0].fields, ["temperature", "humidity"]),
        ("sources.1.topic=b/+", lambda c: [s.topic for s in c.sources], ["sensors/+", "b/+"]),
    ],
)
def test_set_override(override: str, read: Any, expected: Any) -> None:
    assert read(load_config(None, [override], env={})) == expected


def test_set_overrides_yaml_values_and_list_items(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt: {port: 1884, host: a}\nsources: [{topic: x/+}, {topic: y/+, ts_field: t}]\n")
    cfg = load_config(path, ["mqtt.port=1885", "sources.1.topic=z/+", "mqtt.port=1886"], env={})
    assert (cfg.mqtt.port, cfg.mqtt.host) == (1886, "a")
    assert cfg.sources == [SourceConfig("x/+"), SourceConfig("z/+", None, "t")]


@pytest.mark.parametrize(
    ("override", "path", "expected"),
    [
        ("mqtt.hots=x", "mqtt.hots", "did you mean 'host'?"),
        ("nosuch=1", "nosuch", "one of the keys agent_id"),
        ("mqtt.port.extra=1", "mqtt.port.extra", "a path ending at mqtt.port"),
        ("sources.5.topic=a/+", "sources[5]", "a list index from 0 to 1"),
        ("sources.first.topic=a/+", "sources[first]", "a list index"),
        ("mqtt.port", "--set", "KEY=VALUE"),
        ("=5", "--set", "KEY=VALUE"),
    ],
)
def test_set_override_of_unknown_path_is_an_error(override: str, path: str, expected: str) -> None:
    problem = only_problem(None, (override,))
    assert problem.path == path
    assert expected in problem.expected


def test_bad_set_value_is_attributed_to_the_override() -> None:
    problem = only_problem(None, ("mqtt.port=abc",))
    assert str(problem) == "mqtt.port: got 'abc', expected an integer from 1 to 65535 (set by --set mqtt.port)"


def test_unparseable_set_value_for_non_string_key() -> None:
    problem = only_problem(None, ("sources=[{topic: a",))
    assert problem.path == "sources"
    assert "written as YAML" in problem.expected


# --------------------------------------------------------------------------- environment overrides


def test_env_overrides_any_key_case_insensitively() -> None:
    env = {
        "EDGE_AGENT__MQTT__HOST": "broker",
        "edge_agent__mqtt__PORT": "1884",
        "EDGE_AGENT__MQTT__TLS__ENABLED": "true",
        "EDGE_AGENT__SOURCES__0__FIELDS": "[a, b.c]",
        "EDGE_AGENT__MODELS__ASSIGN__temp-*": "temperature",
    }
    cfg = load_config(None, env=env)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls.enabled) == ("broker", 1884, True)
    assert cfg.sources[0].fields == ["a", "b.c"]
    assert cfg.models.assign == {"temp-*": "temperature"}


def test_whole_list_from_env_applies_before_its_items() -> None:
    env = {"EDGE_AGENT__SOURCES__0__TOPIC": "b/+", "EDGE_AGENT__SOURCES": "[{topic: a/+, ts_field: t}]"}
    assert load_config(None, env=env).sources == [SourceConfig("b/+", None, "t")]


def test_unrelated_environment_is_ignored() -> None:
    env = {"EDGE_AGENT_MQTT_PASSWORD": "s3cret", "HOME": "/root", "EDGE_AGENTX__MQTT__PORT": "1"}
    assert load_config(None, env=env) == AgentConfig()


def test_env_with_unknown_path_is_an_error_naming_the_variable() -> None:
    problem = only_problem(None, env={"EDGE_AGENT__MQTT__HOTS": "broker"})
    assert problem.path == "mqtt.hots"
    assert problem.origin == "EDGE_AGENT__MQTT__HOTS"


@pytest.mark.parametrize(
    ("env_port", "set_port", "expected"),
    [(None, None, 1884), ("1885", None, 1885), ("1885", "1886", 1886), (None, "1886", 1886)],
)
def test_precedence_defaults_yaml_env_set(tmp_path: Path, env_port: str | None, set_port: str | None, expected: int) -> None:
    path = write(tmp_path, "mqtt: {port: 1884, host: from-yaml}\n")
    env = {} if env_port is None else {"EDGE_AGENT__MQTT__PORT": env_port}
    overrides = [] if set_port is None else [f"mqtt.port={set_port}"]
    cfg = load_config(path, overrides, env=env)
    assert cfg.mqtt.port == expected
    assert cfg.mqtt.host == "from-yaml"  # untouched keys keep the file's value
    assert cfg.mqtt.keepalive == MQTTConfig().keepalive  # and unset ones the default


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AGENT__HTTP__PORT", "9100")
    assert load_config(None).http.port == 9100


# --------------------------------------------------------------------------- secrets


def test_password_from_env(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    cfg = load_config(None, [f"mqtt.password_file={secret_file}"], env={})
    assert mqtt_password(cfg, {"EDGE_AGENT_MQTT_PASSWORD": "from-env"}) == "from-env"


def test_password_env_name_is_configurable() -> None:
    cfg = load_config(None, ["mqtt.password_env=BROKER_PW"], env={})
    assert mqtt_password(cfg, {"BROKER_PW": "x1", "EDGE_AGENT_MQTT_PASSWORD": "x2"}) == "x1"


def test_password_from_file_when_env_unset_or_empty(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("  from-file \n")
    cfg = load_config(None, [f"mqtt.password_file={secret_file}"], env={})
    assert mqtt_password(cfg, {}) == "from-file"
    assert mqtt_password(cfg, {"EDGE_AGENT_MQTT_PASSWORD": ""}) == "from-file"


def test_no_password_configured() -> None:
    assert mqtt_password(AgentConfig(), {}) is None


def test_unreadable_password_file_is_a_config_error(tmp_path: Path) -> None:
    cfg = load_config(None, [f"mqtt.password_file={tmp_path / 'missing'}"], env={})
    with pytest.raises(ConfigError) as caught:
        mqtt_password(cfg, {})
    assert caught.value.problems[0].path == "mqtt.password_file"


@pytest.mark.parametrize(
    ("text", "overrides", "env"),
    [
        ("mqtt:\n  password: hunter2\n", (), {}),
        (None, ("mqtt.password=hunter2",), {}),
        (None, (), {"EDGE_AGENT__MQTT__PASSWORD": "hunter2"}),
    ],
    ids=["yaml", "set", "env"],
)
def test_password_key_is_rejected_with_a_hint_and_never_echoed(
    tmp_path: Path, text: str | None, overrides: tuple[str, ...], env: dict[str, str]
) -> None:
    path = write(tmp_path, text) if text else None
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides, env=env)
    assert [p.path for p in caught.value.problems] == ["mqtt.password"]
    assert "EDGE_AGENT_MQTT_PASSWORD" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value.problems)


# --------------------------------------------------------------------------- cross-field rules


@pytest.mark.parametrize(
    "topic",
    ["sensors/+", "#", "a/#", "+/+/x", "tele/{sensor}/SENSOR", "zigbee2mqtt/{sensor}", "{sensor}", "site/+/{sensor}/#"],
)
def test_valid_source_topics(topic: str) -> None:
    assert load_config(None, [f"sources.0.topic={topic}"], env={}).sources[0].topic == topic


@pytest.mark.parametrize(
    "topic",
    ["a/#/b", "a/b#", "a+/b", "tele/{sensor}/{sensor}", "tele/x{sensor}/SENSOR", "tele/{device}/SENSOR", "a/{sensor", "a/}/b"],
)
def test_invalid_source_topics(topic: str) -> None:
    problem = only_problem(None, (f"sources.0.topic={topic}",))
    assert (problem.path, problem.value) == ("sources[0].topic", repr(topic))
    assert "topic filter" in problem.expected


@pytest.mark.parametrize(
    ("overrides", "path", "expected"),
    [
        (("mqtt.reconnect_min_delay=10", "mqtt.reconnect_max_delay=5"), "mqtt.reconnect_min_delay", "at most mqtt.reconnect_max_delay"),
        (("decision.k=3", "decision.n=2"), "decision.k", "at most decision.n (2)"),
        (("decision.clear_threshold=0.6",), "decision.clear_threshold", "at most decision.threshold (0.5)"),
        (("sources=[]",), "sources", "at least one source"),
        (("sources=[{topic: a/+}, {topic: a/+}]",), "sources[1].topic", "not already used by sources[0]"),
        (("sources.0.fields=[]",), "sources[0].fields", "at least one field"),
        (("sources.0.fields=[a, a]",), "sources[0].fields", "each field once"),
        (("sources.0.fields=[a..b]",), "sources[0].fields[0]", "dotted path"),
        (("agent_id=a/b",), "agent_id", "without '/', '+' or '#'"),
        (("agent_id=a+b",), "agent_id", "without '/', '+' or '#'"),
        (("agent_id=#",), "agent_id", "without '/', '+' or '#'"),
        (("mqtt.tls.cert_file=c.pem",), "mqtt.tls.key_file", "mqtt.tls.cert_file is set"),
        (("mqtt.tls.key_file=c.key",), "mqtt.tls.cert_file", "mqtt.tls.key_file is set"),
        (("topics.verdicts=edge/{agent_id}/verdicts",), "topics.verdicts", "containing {sensor_id}"),
        (("topics.alerts=edge/{agent_id}/{kind}/{sensor_id}",), "topics.alerts", "only the placeholders {agent_id} and {sensor_id}"),
        (("topics.alerts=edge/{sensor_id!r}",), "topics.alerts", "only the placeholders"),
        (("topics.verdicts=edge/+/{sensor_id}",), "topics.verdicts", "wildcard"),
        (("topics.verdicts=edge/{sensor_id",), "topics.verdicts", "unclosed"),
        (("topics.status=edge/{sensor_id}",), "topics.status", "only the placeholder {agent_id}"),
        (("topics.errors=edge/{agent}/errors",), "topics.errors", "only the placeholder {agent_id}"),
        (("models.pinned_sha256.m=abc",), "models.pinned_sha256['m']", "64 hexadecimal"),
        (("learning.features=[]",), "learning.features", "at least one feature"),
        (("learning.features=[value, delta, value]",), "learning.features", "each feature once"),
        (("learning.features=[value, median]",), "learning.features[1]", "unknown feature transform 'median'"),
        (("learning.features=[value, 'drift:1']",), "learning.features[1]", "a window of at least 2"),
    ],
)
def test_cross_field_rules(overrides: tuple[str, ...], path: str, expected: str) -> None:
    problem = only_problem(None, overrides)
    assert problem.path == path
    assert expected in problem.expected


def test_cross_field_rules_accept_boundaries() -> None:
    cfg = load_config(
        None,
        [
            "mqtt.reconnect_min_delay=5",
            "mqtt.reconnect_max_delay=5",
            "decision.k=3",
            "decision.n=3",
            "mqtt.tls.cert_file=c.pem",
            "mqtt.tls.key_file=c.key",
            "topics.status=status/{agent_id}/x",
            f"models.pinned_sha256.m={'ab' * 32}",
        ],
        env={},
    )
    assert cfg.decision.k == cfg.decision.n == 3


def test_cross_field_rule_is_skipped_when_its_field_is_already_bad() -> None:
    # reconnect_min_delay=oops is reported once, not again as "greater than max" via its default.
    problems = problems_of(None, ("mqtt.reconnect_min_delay=oops", "mqtt.reconnect_max_delay=0.5"))
    assert [p.path for p in problems] == ["mqtt.reconnect_min_delay"]


def test_rules_still_check_other_sources_when_one_is_malformed() -> None:
    problems = problems_of(None, ("sources=[5, {topic: a/#/b}]",))
    assert [p.path for p in problems] == ["sources[0]", "sources[1].topic"]


def test_parse_config_validates_a_mapping() -> None:
    assert parse_config({"mqtt": {"port": 1884}}).mqtt.port == 1884
    with pytest.raises(ConfigError):
        parse_config({"mqtt": {"port": "x"}})


# --------------------------------------------------------------------------- reference


def _leaf_keys(cls: Any, prefix: str) -> list[str]:
    keys: list[str] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            keys += _leaf_keys(tp, path + ".")
        elif getattr(tp, "__origin__", None) is list and dataclasses.is_dataclass(tp.__args__[0]):
            keys += _leaf_keys(tp.__args__[0], path + "[].")
        else:
            keys.append(path)
    return keys


def test_reference_lists_every_leaf_key_with_type_and_default() -> None:
    table = config_reference_markdown()
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines()[2:]}
    leaves = _leaf_keys(AgentConfig, "")
    assert len(leaves) > 40
    assert set(leaves) <= set(rows)
    assert table.splitlines()[0].startswith("| Key | Type | Default | Description |")
    assert "| int | `1883` |" in rows["mqtt.port"] and "1 to 65535" in rows["mqtt.port"]
    assert "string or null" in rows["mqtt.tls.cert_file"]
    assert "DEBUG, INFO, WARNING, ERROR" in rows["log_level"]
    assert "`\"sensors/+\"`" in rows["sources[].topic"]


def test_the_scoring_core_takes_the_config_defaults_whole() -> None:
    # One set of defaults: the config's come from Decision and LearningPlan, and the agent
    # hands every decision.* and learning.* key on, so a default config builds the core's defaults.
    from edge_agent.agent import decision_of, learning_plan
    from edge_agent.core.adaptation import LearningPlan
    from edge_agent.core.episodes import Decision

    cfg = load_config(None, env={})
    assert decision_of(cfg) == Decision()
    assert learning_plan(cfg) == LearningPlan()
    tuned = load_config(None, ["decision.threshold=0.7", "learning.refit_rows=900", "learning.stale_share=0.25"], env={})
    assert decision_of(tuned).threshold == 0.7
    assert learning_plan(tuned).refit_rows == 900
    assert learning_plan(tuned).stale_share == 0.25


# --------------------------------------------------------------------------- NATS credentials and TLS


@pytest.mark.parametrize(("overrides", "path", "expected"), [
    (("nats.user=agent", "nats.creds_file=/run/agent.creds"), "nats.creds_file", "one kind of NATS authentication"),
    (("nats.user=agent", "nats.token_file=/run/token"), "nats.token_file", "since nats.user is set"),
    (("nats.creds_file=/run/agent.creds", "nats.token_file=/run/token"), "nats.token_file", "since nats.creds_file is set"),
    (("nats.password_file=/run/pw",), "nats.password_file", "together with nats.user"),
    (("nats.tls.cert_file=/run/client.pem",), "nats.tls.key_file", "mutual TLS needs both"),
    (("nats.tls.key_file=/run/client.key",), "nats.tls.cert_file", "mutual TLS needs both"),
])
def test_conflicting_nats_authentication_and_half_a_client_certificate(overrides: tuple[str, ...], path: str,
                                                                       expected: str) -> None:
    problem = only_problem(None, overrides)
    assert problem.path == path and expected in problem.expected, str(problem)


def nats_access_problem(env: dict[str, str], *overrides: str) -> Problem:
    from edge_agent.jetstream.access import nats_access

    cfg = load_config(None, overrides, env={})
    with pytest.raises(ConfigError) as caught:
        nats_access(cfg, env)
    assert len(caught.value.problems) == 1, str(caught.value)
    return caught.value.problems[0]


def test_nats_secrets_that_are_missing_conflicting_or_unreadable_are_config_errors_that_never_show_them(
    tmp_path: Path,
) -> None:
    secret = "Nats-s3cret-value"
    problem = nats_access_problem({"EDGE_AGENT_NATS_TOKEN": secret}, "nats.user=agent")
    assert problem.path == "nats.token_env" and "EDGE_AGENT_NATS_TOKEN" in problem.value and "nats.user" in problem.expected
    assert secret not in str(problem)
    problem = nats_access_problem({"EDGE_AGENT_NATS_TOKEN": secret}, "nats.creds_file=/run/agent.creds")
    assert problem.path == "nats.token_env" and "nats.creds_file" in problem.expected
    problem = nats_access_problem({}, "nats.user=agent")
    assert problem.path == "nats.user" and "EDGE_AGENT_NATS_PASSWORD" in problem.expected
    absent = tmp_path / "absent"
    for key in ("password_file", "creds_file", "tls.ca_file"):
        extra = ("nats.user=agent",) if key == "password_file" else ()
        problem = nats_access_problem({}, *extra, f"nats.{key}={absent}")
        assert problem.path == f"nats.{key}" and "readable" in problem.expected, str(problem)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    problem = nats_access_problem({}, "nats.user=agent", f"nats.password_file={empty}")
    assert problem.path == "nats.password_file" and "empty" in problem.expected
    problem = nats_access_problem({}, f"nats.token_file={empty}")
    assert problem.path == "nats.token_file" and "empty" in problem.expected
    not_creds = tmp_path / "not.creds"
    not_creds.write_text(secret)
    problem = nats_access_problem({}, f"nats.creds_file={not_creds}")
    assert problem.path == "nats.creds_file" and "nsc generate creds" in problem.expected and secret not in str(problem)
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    assert nats_access_problem({}, f"nats.tls.ca_file={not_pem}").path == "nats.tls"


def test_nats_credentials_come_from_env_then_file_and_the_summary_names_only_their_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edge_agent.jetstream import access
    from edge_agent.jetstream.access import nats_access

    password_file = tmp_path / "pw"
    password_file.write_text("from-the-file\n")
    cfg = load_config(None, ("nats.user=agent", f"nats.password_file={password_file}"), env={})
    from_env = nats_access(cfg, {"EDGE_AGENT_NATS_PASSWORD": "from-the-env"})
    assert (from_env.user, from_env.password) == ("agent", "from-the-env")
    from_file = nats_access(cfg, {"EDGE_AGENT_NATS_PASSWORD": ""})  # empty counts as unset, as for MQTT
    assert from_file.password == "from-the-file"
    assert from_file.summary == f"user 'agent' (password from {password_file})"
    assert "from-the" not in from_env.summary + repr(from_env) + repr(from_file)
    token = nats_access(load_config(None, (), env={}), {"EDGE_AGENT_NATS_TOKEN": "tok"})
    assert token.token == "tok" and "tok)" not in token.summary and token.tls is None
    creds = tmp_path / "agent.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\neyJ0\n------END NATS USER JWT------\n"
                     "-----BEGIN USER NKEY SEED-----\nSUAM\n------END USER NKEY SEED------\n")
    creds_cfg = load_config(None, (f"nats.creds_file={creds}",), env={})
    # nats-py needs nkeys (PyNaCl) to sign with the seed; without it the creds file is a config error.
    monkeypatch.setattr(access, "nkeys_installed", lambda: True)
    assert nats_access(creds_cfg, {}).creds_file == str(creds)
    monkeypatch.setattr(access, "nkeys_installed", lambda: False)
    with pytest.raises(ConfigError) as caught:
        nats_access(creds_cfg, {})
    assert caught.value.problems[0].path == "nats.creds_file" and "nats-py[nkeys]" in str(caught.value)


def test_check_config_validates_the_nats_secrets_and_never_prints_them(capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent.cli import main

    args = ["check-config", "--config", str(REPO_CONFIG), "--set", "nats.enabled=true", "--set", "nats.user=agent"]
    monkeypatch.delenv("EDGE_AGENT_NATS_PASSWORD", raising=False)
    assert main(args) == 2
    assert "nats.user: got 'agent', expected a password as well" in capsys.readouterr().err
    monkeypatch.setenv("EDGE_AGENT_NATS_PASSWORD", "Pa55-never-printed")
    assert main(args) == 0
    out = capsys.readouterr()
    assert "NATS nats://localhost:4222 with user 'agent' (password from EDGE_AGENT_NATS_PASSWORD)" in out.out
    assert "Pa55-never-printed" not in out.out + out.err
