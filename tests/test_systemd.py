"""The Raspberry Pi systemd unit: valid for systemd, hardened, and the agent really runs under its restrictions."""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from edge_agent.cli import build_parser
from edge_agent.config import load_config

UNIT = REPO / "deploy/systemd/edge-agent.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
EDGE_AGENT = str(Path(sys.executable).parent / "edge-agent")
MAX_EXPOSURE = 2.0  # systemd-analyze security: 0 (locked down) .. 10 (unprotected); "OK" is below 3


def unit() -> dict[str, list[tuple[str, str]]]:
    """Sections of the unit file as (key, value) lists, keys repeated as systemd allows."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def values(section: str, key: str) -> list[str]:
    return [v for k, v in unit()[section] if k == key]


def single(section: str, key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"[{section}] {key}: {found}"
    return found[0]


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's edge-agent (verify checks the binary exists)."""
    argv = shlex.split(single("Service", "ExecStart"))
    text = UNIT.read_text().replace(f"ExecStart={argv[0]} ", f"ExecStart={EDGE_AGENT} ")
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(runnable_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and only warns: any output is a mistake in the unit.
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stdout + result.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_systemd_rates_the_unit_well_protected(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(runnable_copy(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_runs_the_agent_as_its_own_user_with_a_read_only_system() -> None:
    user = single("Service", "User")
    assert user not in ("root", "0") and single("Service", "Group") == user
    assert single("Service", "ProtectSystem") == "strict"
    assert single("Service", "NoNewPrivileges") == "yes"
    assert single("Service", "ProtectHome") == "yes"
    assert single("Service", "PrivateTmp") == "yes"
    assert single("Service", "CapabilityBoundingSet") == ""
    state = "/var/lib/" + single("Service", "StateDirectory")
    # With ProtectSystem=strict only these are writable: the state directory and nothing else.
    assert values("Service", "ReadWritePaths") == [state]
    assert single("Service", "WorkingDirectory") == state
    assert set(single("Service", "RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_unit_command_is_the_agents_and_reads_its_config_directory() -> None:
    argv = shlex.split(single("Service", "ExecStart"))
    assert Path(argv[0]).name == "edge-agent" and argv[0].startswith("/")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    assert Path(args.config).parent == Path("/etc") / single("Service", "ConfigurationDirectory")
    env_file = single("Service", "EnvironmentFile")
    assert env_file.startswith("-"), "the password file is optional (anonymous brokers)"
    assert Path(env_file[1:]).parent == Path(args.config).parent


def test_restarts_on_failure_but_not_on_a_bad_config(tmp_path: Path) -> None:
    assert single("Service", "Restart") == "on-failure"
    assert single("Unit", "StartLimitIntervalSec") and single("Unit", "StartLimitBurst")
    bad = tmp_path / "config.yaml"
    bad.write_text("mqtt:\n  port: 0\n")
    result = subprocess.run([EDGE_AGENT, "run", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    # The status the agent exits with on a bad config is the one systemd must not restart on.
    assert str(result.returncode) in single("Service", "RestartPreventExitStatus").split(), result.stderr


def test_stop_timeout_leaves_the_agent_time_to_drain() -> None:
    stop = single("Service", "TimeoutStopSec")
    seconds = float(stop.rstrip("s"))
    assert seconds > load_config(REPO / "config.yaml", [], {}).pipeline.shutdown_timeout
    assert values("Service", "KillSignal") in ([], ["SIGTERM"])


def _memory_deny_write_execute() -> None:
    # PR_SET_MDWE (Linux 6.3+): what MemoryDenyWriteExecute=yes applies; inherited across exec.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE")


def _mdwe_supported() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import os"], preexec_fn=_memory_deny_write_execute, capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_agent_scores_under_memory_deny_write_execute(tmp_path: Path, models_dir: Path) -> None:
    assert single("Service", "MemoryDenyWriteExecute") == "yes"
    try:
        supported = _mdwe_supported()
    except (OSError, subprocess.SubprocessError):
        supported = False
    if not supported:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    csv = tmp_path / "readings.csv"
    csv.write_text("timestamp,value\n" + "\n".join(f"{1700000000 + i},{0.9 + 0.01 * (i % 5)}" for i in range(50)) + "\n")
    out = tmp_path / "scored.csv"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    # Everything the running agent imports (paho, prometheus-client, the HTTP server), then real scoring.
    for argv in ([sys.executable, "-c", "import edge_agent.agent, edge_agent.cli"],
                 [EDGE_AGENT, "replay", str(csv), "--out", str(out), "--model", str(models_dir / "default")]):
        result = subprocess.run(argv, preexec_fn=_memory_deny_write_execute, capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0, (argv, result.stderr[-2000:])
    assert len(out.read_text().splitlines()) == 51
