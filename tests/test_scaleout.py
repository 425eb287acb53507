"""Beyond one machine: agents sharing one site's sensors by partition, and the Kubernetes manifests."""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import subprocess
import sys
import time
import urllib.request
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO
from edge_agent.cli import build_parser
from edge_agent.config import ConfigError, load_config
from edge_agent.partition import partition_of
from test_deploy import dockerfile, dockerfile_copies, exec_form, final_stage, one

K8S = REPO / "deploy/k8s"
OVERLAYS = ("single", "sharded")


# --------------------------------------------------------------------------- partitioning


def test_partition_is_the_same_in_every_process() -> None:
    ids = [f"sensor-{i}" for i in range(50)] + ["Küche 1", "vibration-3", ""]
    here = [partition_of(s, 7) for s in ids]
    code = ("import json, sys; from edge_agent.partition import partition_of; "
            "print(json.dumps([partition_of(s, 7) for s in json.loads(sys.argv[1])]))")
    for seed in ("1", "2"):  # str hashes differ between these interpreters; the partition must not
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, json.dumps(ids)], capture_output=True, text=True, env=env, timeout=30)
        assert json.loads(out.stdout) == here, out.stderr
    assert here == [zlib.crc32(s.encode()) % 7 for s in ids]  # documented: CRC-32 of the UTF-8 id


def test_partitions_share_sensors_evenly_and_messages_without_sensor_go_to_the_first() -> None:
    counts = Counter(partition_of(f"pump-{i}", 4) for i in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert all(800 <= n <= 1200 for n in counts.values()), counts
    assert partition_of(None, 4) == 0
    assert {partition_of(f"x{i}", 1) for i in range(20)} == {0}


def test_partition_index_must_be_below_count() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["partition.count=2", "partition.index=2"], {})
    assert [p.path for p in err.value.problems] == ["partition.index"]
    assert load_config(None, ["partition.count=3", "partition.index=2"], {}).partition.index == 2


def _metric(agent: Any, name: str) -> float:
    host, port = agent.http_address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


@pytest.mark.broker
def test_two_agents_score_every_reading_once_and_keep_each_sensor_whole(start_agent, collect, sensor, broker) -> None:
    # A small receive window: the broker stops sending to an agent that leaves 5 messages
    # unacknowledged, so the other agent's readings must really be acknowledged, not just dropped.
    agents = [start_agent("partition.count=2", f"partition.index={i}", "mqtt.receive_maximum=5") for i in range(2)]
    ids = {agent.cfg.agent_id: i for i, agent in enumerate(agents)}
    out = collect(["edge/+/verdicts/#", "edge/+/errors"])
    sensors = [f"pump-{i}" for i in range(12)]
    assert {partition_of(s, 2) for s in sensors} == {0, 1}, "the test needs sensors on both agents"
    readings = 0
    for round_ in range(10):
        for s in sensors:
            sensor.send_json(f"sensors/{s}", {"value": 0.9 + 0.01 * (round_ % 3), "ts": 1000 * round_ + sensors.index(s)})
            readings += 1
    sensor.send("sensors/pump-0", b"{broken")  # reported by pump-0's agent only
    sensor.send("sensors/pump-1", b"{broken")
    sensor.send("sensors/", b"0.9")  # names no sensor (empty level): the first agent reports it

    verdicts = out.wait_count("edge/", readings + 3)
    time.sleep(0.5)  # and nothing more: no reading scored by both agents
    verdicts = [m for m in out.messages if "/verdicts/" in m.topic]
    errors = [(m.topic.split("/")[1], json.loads(m.payload)) for m in out.messages if m.topic.endswith("/errors")]
    assert len(verdicts) == readings

    seen: Counter[tuple[str, Any]] = Counter()
    scored_by: dict[str, set[str]] = defaultdict(set)
    for message in verdicts:
        agent_id = message.topic.split("/")[1]
        verdict = json.loads(message.payload)
        seen[(verdict["sensor_id"], verdict["ts"])] += 1
        scored_by[verdict["sensor_id"]].add(agent_id)
        assert "duplicate" not in verdict
    assert len(seen) == readings and set(seen.values()) == {1}, "every reading exactly once"
    for s in sensors:
        assert len(scored_by[s]) == 1, f"{s} split across agents: {scored_by[s]}"
        [agent_id] = scored_by[s]
        assert ids[agent_id] == partition_of(s, 2)

    reports = sorted((ids[agent_id], e["reason"], e["sensor_id"]) for agent_id, e in errors)
    assert reports == sorted([
        (partition_of("pump-0", 2), "bad_json", "pump-0"),
        (partition_of("pump-1", 2), "bad_json", "pump-1"),
        (0, "bad_sensor_id", None),
    ])
    # Each agent acknowledged the other's messages without scoring them, and says so.
    for i, agent in enumerate(agents):
        mine = sum(1 for s in sensors if partition_of(s, 2) == i) * 10
        others = readings - mine
        others += sum(1 for s in ("pump-0", "pump-1") if partition_of(s, 2) != i) + (1 if i != 0 else 0)
        assert _metric(agent, "edge_agent_partition_skipped_total") == others


# --------------------------------------------------------------------------- Kubernetes manifests


def load_overlay(name: str) -> list[dict[str, Any]]:
    """The documents a kustomization includes, following directory resources (like `kubectl kustomize`)."""

    def walk(directory: Path) -> list[dict[str, Any]]:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        docs: list[dict[str, Any]] = []
        for resource in kustomization["resources"]:
            path = (directory / resource).resolve()
            assert path.exists(), f"{directory.name}/kustomization.yaml names missing {resource}"
            docs.extend(walk(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d])
        return docs

    return walk(K8S / name)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    return found


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    [agent] = workload(docs)["spec"]["template"]["spec"]["containers"]
    return agent


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_configs(docs: list[dict[str, Any]], tmp_path: Path) -> list[Any]:
    """The agent configuration of every pod: ConfigMap file + the container's environment + its args."""
    wl = workload(docs)
    agent = container(docs)
    args = build_parser().parse_args(agent["args"])
    assert args.command == "run"
    mount = next(m for m in agent["volumeMounts"] if posixpath.dirname(args.config) == m["mountPath"].rstrip("/"))
    volume = next(v for v in wl["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    [configmap] = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"]]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(configmap["data"][posixpath.basename(args.config)])
    configs = []
    for index in range(wl["spec"]["replicas"]):
        pod = {"metadata.name": f"{wl['metadata']['name']}-{index}",
               "metadata.labels['apps.kubernetes.io/pod-index']": str(index)}
        env: dict[str, str] = {}
        for var in agent.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            elif "fieldRef" in var["valueFrom"]:
                env[var["name"]] = pod[var["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                env[var["name"]] = "from-secret"
        configs.append(load_config(config_file, list(args.overrides), env))
    return configs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workload_service_and_servicemonitor_fit_together(overlay: str) -> None:
    docs = load_overlay(overlay)
    wl = workload(docs)
    pod_labels = wl["spec"]["template"]["metadata"]["labels"]
    assert selects(wl["spec"]["selector"]["matchLabels"], pod_labels)
    port_names = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    for service in by_kind(docs, "Service"):
        assert selects(service["spec"]["selector"], pod_labels), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, port
    [monitor] = by_kind(docs, "ServiceMonitor")
    scraped = [s for s in by_kind(docs, "Service") if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert len(scraped) == 1, "exactly one Service, or every pod is scraped twice"
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in scraped[0]["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # Prometheus Operator names the job after the Service; the alert rules select that job.
    job = scraped[0]["metadata"]["name"]
    rules = yaml.safe_load((REPO / "deploy/prometheus/rules.yml").read_text())
    assert all(f'job="{job}"' in r["expr"] for g in rules["groups"] for r in g["rules"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_gets_a_valid_config_the_image_can_serve(overlay: str, tmp_path: Path) -> None:
    docs = load_overlay(overlay)
    agent = container(docs)
    configs = pod_configs(docs, tmp_path)
    http_port = next(p["containerPort"] for p in agent["ports"] if p["name"] == "http")
    image_models = {c.dest.rstrip("/"): c.sources[0] for c in dockerfile_copies(final_stage(dockerfile())) if c.from_stage is None}
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    for cfg in configs:
        assert cfg.http.port == http_port
        assert cfg.models.dir in image_models, f"models.dir {cfg.models.dir} is not filled by the image"
        shipped = REPO / image_models[cfg.models.dir]
        for model in {cfg.models.default, *cfg.models.assign.values()} - {None}:
            assert (shipped / str(model) / "manifest.json").is_file(), model
        # The broker password comes from the Secret, through the variable the config names.
        [password] = [e for e in agent["env"] if e["name"] == cfg.mqtt.password_env]
        ref = password["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"]
        assert cfg.mqtt.username
        grace = workload(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > cfg.pipeline.shutdown_timeout
    # Each pod its own agent id (its own MQTT session) and, when sharded, its own partition.
    assert len({c.agent_id for c in configs}) == len(configs)
    assert sorted(c.partition.index for c in configs) == list(range(len(configs)))
    assert {c.partition.count for c in configs} == {len(configs)}


def test_single_agent_is_never_two() -> None:
    wl = workload(load_overlay("single"))
    assert wl["kind"] == "Deployment" and wl["spec"]["replicas"] == 1
    # A rolling update would run old and new pod with one client id, stealing the session.
    assert wl["spec"]["strategy"]["type"] == "Recreate"
    sharded = workload(load_overlay("sharded"))
    assert sharded["kind"] == "StatefulSet" and sharded["spec"]["replicas"] > 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_images_user_with_read_only_root_and_probes(overlay: str) -> None:
    docs = load_overlay(overlay)
    spec = workload(docs)["spec"]["template"]["spec"]
    agent = container(docs)
    stage = final_stage(dockerfile())
    uid = int(one(stage, "USER").args.split(":")[0])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == uid
    assert spec["automountServiceAccountToken"] is False
    ctx = agent["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    # The one writable place is the image's state volume.
    state = exec_form(one(stage, "VOLUME").args)
    writable = [m["mountPath"] for m in agent["volumeMounts"] if not m.get("readOnly")]
    assert writable and set(writable) <= set(state)
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert agent["resources"]["limits"]["memory"]


def test_prometheusrule_carries_the_shipped_alert_rules() -> None:
    [rule] = by_kind(load_overlay("single"), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((REPO / "deploy/prometheus/rules.yml").read_text())


def test_every_manifest_is_in_a_kustomization() -> None:
    used = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            used.add((kustomization.parent / resource).resolve())
    files = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files <= used, sorted(str(p) for p in files - used)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_kustomize_renders_the_overlay(overlay: str) -> None:
    result = subprocess.run(["kubectl", "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted(d["kind"] for d in rendered) == sorted(d["kind"] for d in load_overlay(overlay))
    assert {d["metadata"].get("namespace") for d in rendered} == {"edge"}
