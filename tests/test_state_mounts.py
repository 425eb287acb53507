"""Every shipped deployment keeps learning.state_dir on a writable, persistent mount.

Each deployment is rendered as its runtime would see it (the image's CMD, compose's command
and environment, the Kubernetes overlays through `kubectl kustomize` where it is installed,
the systemd unit's ExecStart and Environment), the config it would load is resolved the way
the agent resolves it (a relative state_dir is taken from the config file's folder), and the
mount holding that folder must be writable and outlive the process.
"""

from __future__ import annotations

import posixpath
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO
from edge_agent.agent import state_dir
from edge_agent.cli import build_parser
from edge_agent.config import AgentConfig, load_config
from test_deploy import (
    deployed_agent_config,
    deployed_config_path,
    dockerfile,
    exec_form,
    final_stage,
    mounts,
    one,
    service,
)
from test_scaleout import K8S, OVERLAYS, container, load_overlay, pod_configs, workload
from test_systemd import single, values


@dataclass(frozen=True)
class Place:
    """A folder a deployment provides: whether the agent can write there and whether it outlives the process."""

    path: str
    writable: bool
    persistent: bool
    what: str


def holding(places: list[Place], path: str) -> Place | None:
    """The innermost place that holds ``path`` (the mount a file there would land on); of two at
    the same path, the later (a compose volume over the image's VOLUME)."""
    inside = [(len(p.path.rstrip("/")), i, p) for i, p in enumerate(places)
              if path == p.path.rstrip("/") or path.startswith(p.path.rstrip("/") + "/")]
    return max(inside, default=(0, 0, None))[2]


def resolved_state_dir(cfg: AgentConfig, config_path: str) -> str:
    """Where the agent puts its state, by the agent's own rule, for a config file at ``config_path``."""
    return posixpath.normpath(str(state_dir(cfg, Path(posixpath.dirname(config_path)))))


def assert_on_persistent_writable_mount(places: list[Place], state: str, deployment: str) -> None:
    place = holding(places, state)
    assert place is not None, f"{deployment}: state_dir {state} is on no mount (the image's read-only root)"
    assert place.writable, f"{deployment}: state_dir {state} is on {place.what} at {place.path}, which is read-only"
    assert place.persistent, f"{deployment}: state_dir {state} is on {place.what} at {place.path}, lost on a restart"


# --------------------------------------------------------------------------- the image and compose


def image_places() -> list[Place]:
    """The image alone: its VOLUMEs (created for its user) are writable and kept across container restarts."""
    stage = final_stage(dockerfile())
    return [Place(v, True, True, "the image's VOLUME") for v in exec_form(one(stage, "VOLUME").args)]


def compose_places() -> list[Place]:
    places = image_places()
    agent = service("agent")
    for entry, m in zip(agent.get("volumes", []), mounts(agent), strict=True):
        options = str(entry).split(":")[2:] if isinstance(entry, str) else []
        read_only = "ro" in ",".join(options).split(",") or (isinstance(entry, dict) and bool(entry.get("read_only")))
        places.append(Place(m.target, not read_only, True, f"{'bind mount' if m.is_bind else 'named volume'} {m.source}"))
    for target in agent.get("tmpfs", []):
        places.append(Place(str(target).split(":")[0], True, False, "a tmpfs"))
    return places


def test_the_image_alone_keeps_its_state_in_its_volume() -> None:
    args = build_parser().parse_args(exec_form(one(final_stage(dockerfile()), "CMD").args))
    _, repo_config = deployed_config_path()
    cfg = load_config(repo_config, list(args.overrides), {})
    assert_on_persistent_writable_mount(image_places(), resolved_state_dir(cfg, args.config), "the image's CMD")


def test_compose_keeps_the_agents_state_on_its_named_volume() -> None:
    in_image, _ = deployed_config_path()
    state = resolved_state_dir(deployed_agent_config(), in_image)
    assert_on_persistent_writable_mount(compose_places(), state, "compose")
    place = holding(compose_places(), state)
    assert place is not None and place.what.startswith("named volume"), \
        f"compose: state_dir {state} is on {place}: an anonymous volume is gone with `docker compose down`, name it"


# --------------------------------------------------------------------------- Kubernetes


def rendered(overlay: str) -> list[dict[str, Any]]:
    """The overlay as `kubectl kustomize` renders it, or read by hand where kubectl is missing."""
    if shutil.which("kubectl") is None:
        return load_overlay(overlay)
    result = subprocess.run(["kubectl", "kustomize", str(K8S / overlay)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def pod_places(docs: list[dict[str, Any]]) -> list[Place]:
    wl = workload(docs)
    volumes = {v["name"]: v for v in wl["spec"]["template"]["spec"].get("volumes", [])}
    templates = {t["metadata"]["name"] for t in wl["spec"].get("volumeClaimTemplates", [])}
    claims = {c["metadata"]["name"] for c in docs if c["kind"] == "PersistentVolumeClaim"}
    places = []
    for m in container(docs)["volumeMounts"]:
        volume = volumes.get(m["name"], {})
        if m["name"] in templates:
            persistent, what = True, f"volumeClaimTemplate {m['name']}"
        elif "persistentVolumeClaim" in volume:
            name = volume["persistentVolumeClaim"]["claimName"]
            assert name in claims, f"volume {m['name']} claims {name}, which no manifest creates"
            persistent, what = True, f"PersistentVolumeClaim {name}"
        else:
            persistent, what = False, f"volume {m['name']} ({', '.join(k for k in volume if k != 'name')})"
        read_only = bool(m.get("readOnly")) or "configMap" in volume or "secret" in volume
        places.append(Place(m["mountPath"], not read_only, persistent, what))
    return places


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_keeps_every_pods_state_on_a_persistent_volume(overlay: str, tmp_path: Path) -> None:
    docs = rendered(overlay)
    config_path = build_parser().parse_args(container(docs)["args"]).config
    places = pod_places(docs)
    for cfg in pod_configs(docs, tmp_path):
        assert_on_persistent_writable_mount(places, resolved_state_dir(cfg, config_path), f"k8s/{overlay} pod {cfg.agent_id}")


# --------------------------------------------------------------------------- systemd


def unit_environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in values("Service", "Environment"):
        for word in shlex.split(line):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def test_systemd_keeps_the_state_in_its_state_directory() -> None:
    argv = shlex.split(single("Service", "ExecStart"))
    args = build_parser().parse_args(argv[1:])
    # The install steps copy the repo's config.yaml to the config path (deploy/systemd/edge-agent.service).
    cfg = load_config(REPO / "config.yaml", list(args.overrides),
                      {k: v for k, v in unit_environment().items() if k.startswith("EDGE_AGENT__")})
    # ProtectSystem=strict: everything is read-only but ReadWritePaths; StateDirectory is kept, PrivateTmp is not.
    assert single("Service", "ProtectSystem") == "strict"
    kept = {"/var/lib/" + single("Service", "StateDirectory")}
    places = [Place("/", False, True, "the system (ProtectSystem=strict)"), Place("/tmp", True, False, "PrivateTmp")]
    places += [Place(p, True, p in kept, "ReadWritePaths") for p in values("Service", "ReadWritePaths")]
    assert_on_persistent_writable_mount(places, resolved_state_dir(cfg, args.config), "systemd")
