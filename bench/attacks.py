"""The attack table: each attack on the agent run as its test, one row each, into docs/results/attacks.md.

    .venv/bin/python -m bench.attacks            # runs the attack tests (under a minute) and writes the table
    .venv/bin/python -m bench.attacks --print    # prints the table instead of writing it

Every row names the tests that carry out the attack against the real parts (files on
disk, a Mosquitto of its own on a loopback port, HTTP over loopback sockets) and what
they measured, from a run of this commit. Also timed here: one /metrics render at
10,000 sensors, with and without the per-sensor bound (http.sensor_series).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from edge_agent.core.domain import Verdict
from edge_agent.metrics import AgentMetrics

REPO = Path(__file__).resolve().parents[1]

OUT = REPO / "docs" / "results" / "attacks.md"

# (attack, what must hold, tests: pytest node ids, or file::prefix of test names)
ATTACKS: list[tuple[str, str, list[str]]] = [
    ("Sensor ids `.`, `..`, `%2F..`, `...new`, `pump-a.old`, 253 ASCII, 35 CJK, `CON`, `nul`, control characters, `.tmp-x`",
     "other sensors' learned files unchanged byte for byte; each hostile id learns and reloads after a restart",
     ["tests/test_state.py::test_a_hostile_sensor_id_learns_reloads_and_leaves_other_models_untouched"]),
    ("Kill during a save: half-written `<hash>.new`, kill between the two renames, a temporary file",
     "no leftover loads as a sensor; the previous model is put back; no warning logged",
     ["tests/test_state.py::test_leftovers_of_a_kill_are_settled_quietly_and_never_become_sensors"]),
    ("Save fails (state dir not writable)", "the fitted model scores; an error is logged; the sensor does not relearn",
     ["tests/test_state.py::test_a_failed_save_keeps_the_fitted_model_scoring"]),
    ("State saved by earlier versions under quote()-named folders, with their leftovers",
     "migrated to hashed folders and loaded; leftovers removed",
     ["tests/test_state.py::test_models_saved_under_the_old_quoted_names_are_migrated"]),
    ("One sensor's model copied over another's folder", "refused: its sensor_id does not hash to the folder",
     ["tests/test_state.py::test_a_folder_whose_manifest_names_another_sensor_is_refused"]),
    ("A model edited: forest, calibration scores to 0, range margins to null, features, imputes, threshold",
     "load refused, for learned models (manifest.sha256) and pinned shipped ones (models.pinned_manifest_sha256)",
     ["tests/test_state.py::test_editing_any_part_of_a_learned_model_refuses_its_load",
      "tests/test_state.py::test_editing_any_part_of_a_pinned_shipped_model_refuses_its_load",
      "tests/test_state.py::test_a_manifest_edited_along_with_its_forest_hash_is_refused_by_its_digest",
      "tests/test_state.py::test_the_agent_refuses_a_shipped_model_whose_manifest_misses_its_pin"]),
    ("A 250-character sensor id against a broker with `max_packet_size 400` (MQTT 5, 3.1.1) or `message_size_limit 400`",
     "a short error report instead of the verdict; the reading settled; every good reading answered; no redelivery after a restart",
     ["tests/test_poison.py::test_a_verdict_too_large_for_the_broker_is_reported_and_the_good_readings_flow"]),
    ("A 64 MiB payload under MQTT 3.1.1", "skipped as it arrives, not read into memory; reported as too_large",
     ["tests/test_poison.py::test_under_3_1_1_a_huge_payload_is_skipped_not_read_into_memory"]),
    ("A 65,000-character topic", "its report is under 1,000 bytes, the topic cut short",
     ["tests/test_poison.py::test_a_huge_topic_is_reported_cut_short"]),
    ("300 HTTP connections dripping a byte every 0.5 s, reopened when cut", "≥ 99 % of /predict and 100 % of /healthz answered",
     ["tests/test_http_slow.py::test_300_slow_connections_leave_predict_and_healthz_answered"]),
    ("Every connection busy answering (slow /metrics renders), then probes and /predict",
     "/healthz and /readyz answered from 16 connections kept for probes; /predict a 503",
     ["tests/test_http_slow.py::test_probes_are_answered_when_every_connection_is_busy"]),
    ("Anonymous /metrics scrape with http.metrics_token on", "401 without the token; probes stay open",
     ["tests/test_exposure.py::test_metrics_require_the_token_when_told_and_probes_stay_open"]),
    ("10,000 sensors on /metrics", "series of their own for the first http.sensor_series, the rest under sensor=\"_other\"",
     ["tests/test_exposure.py::test_sensors_beyond_the_bound_are_counted_together_not_given_series"]),
    ("300 retained junk messages on sensor topics, two broker restarts (MQTT 5 and 3.1.1)",
     "counted and reported once, not on every connect",
     ["tests/test_retained.py::test_retained_junk_is_counted_once_across_reconnects"]),
]


def run_tests() -> dict[str, tuple[str, str]]:
    """pytest over every attack's tests: test id -> (outcome, what it printed)."""
    files = sorted({node.split("::")[0] for _, _, nodes in ATTACKS for node in nodes})
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                        "-o", "junit_logging=system-out", *files], cwd=REPO, check=False)
        root = ET.parse(report).getroot()
    results: dict[str, tuple[str, str]] = {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        failed = case.find("failure") is not None or case.find("error") is not None
        outcome = "skipped" if case.find("skipped") is not None else "failed" if failed else "passed"
        out = case.find("system-out")
        results[name] = (outcome, out.text or "" if out is not None else "")
    return results


def render_cost(sensors: int, sensor_series: int) -> str:
    registry = CollectorRegistry()
    AgentMetrics(registry, sensor_series).record_verdicts(
        [Verdict(f"sensor-{i:05d}", {"value": 1.0}, 0, 0.3, 0, "default", "1") for i in range(sensors)])
    times = []
    for _ in range(5):
        start = time.perf_counter()
        body = generate_latest(registry)
        times.append(time.perf_counter() - start)
    return f"{len(body) / 2**20:.2f} MiB, {min(times) * 1000:.0f}-{max(times) * 1000:.0f} ms a render"


def figures(printed: str) -> list[str]:
    return [line.split("FIGURE:", 1)[1].strip() for line in printed.splitlines() if "FIGURE:" in line]


def table(results: dict[str, tuple[str, str]], extra: dict[str, str]) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, check=False).stdout
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Attack table",
        "",
        f"Generated by `python -m bench.attacks` at commit `{commit}`{' (with uncommitted changes)' if dirty else ''} on {when}.",
        "Each row is an attack carried out by the tests it names; see [../security.md](../security.md) for what holds and why.",
        "",
        "| attack | what holds | held | measured | tests |",
        "| --- | --- | --- | --- | --- |",
    ]
    for attack, holds, nodes in ATTACKS:
        cases = {k: v for k, v in results.items() if any(k == n or k.startswith(n + "[") for n in nodes)}
        passed = sum(o == "passed" for o, _ in cases.values())
        held = "yes" if cases and passed == len(cases) else f"**no** ({passed} of {len(cases)})"
        measured = "; ".join([f for _, p in sorted(cases.items()) for f in figures(p[1])] + ([extra[attack]] if attack in extra else []))
        tests = "<br>".join(f"`{n.split('::')[1]}`" + (f" ({len([k for k in cases if k.startswith(n)])})" if len([k for k in cases if k.startswith(n)]) > 1 else "")
                            for n in nodes)
        lines.append(f"| {attack} | {holds} | {held} | {measured or '-'} | {tests} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the table instead of writing docs/results/attacks.md")
    args = parser.parse_args()
    extra = {next(a for a, _, _ in ATTACKS if a.startswith("10,000 sensors")): f"one render at 10,000 sensors: {render_cost(10_000, 10_000)} with a series each; "
                             f"{render_cost(10_000, 1000)} with the default bound of 1,000"}
    text = table(run_tests(), extra)
    if args.print:
        print(text)
    else:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(text)
        print(f"wrote {OUT.relative_to(REPO)}")
        print(text)


if __name__ == "__main__":
    main()
