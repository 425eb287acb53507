"""Regenerate the results pages from the benchmarks: one command, every table, with the commit and date.

Usage:
  python bench/report.py detection      # -> docs/results/detection.md
  python bench/report.py performance    # -> docs/results/performance.md
  python bench/report.py faults         # -> docs/results/faults.md
  python bench/report.py all

Each section runs one benchmark script as a subprocess with the repository's defaults
(no per-file or per-dataset setting) and copies what it prints, under the exact command
that printed it. The page says which commit it ran on, when, and on what machine; a
working tree with uncommitted changes is named as such, so a page is never mistaken for
the commit's own.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"


@dataclass(frozen=True)
class Section:
    title: str
    why: str  # one line: what the figures answer
    args: tuple[str, ...]  # after the interpreter


DETECTION = [
    Section("Real univariate streams (NAB, development split)",
            "The benchmark's own rules: per-reading score at the one corpus-wide threshold the benchmark's search "
            "picks, and the agent's alerts as deployed (every anomalous reading; episode onsets). 0 = never fires, "
            "100 = flags the first row of every window.",
            ("bench/eval_nab.py", "-q")),
    Section("Industrial pump (SKAB, the subset in shared/)",
            "The benchmark's protocol (first 400 rows of each experiment learned, the rest scored), pooled F1, "
            "false- and missed-alarm rates.",
            ("bench/eval_skab.py", "-q")),
    Section("Simulator, shipped models",
            "24 simulated sensors, 6 hours each, anomalies injected: share found, share found before they ended, "
            "delay, false alarms.",
            ("bench/eval_simulator.py", "--hours", "6")),
    Section("Simulator, every sensor learning its own model",
            "As above, but no model is assigned: each sensor learns from its first readings (none injected there).",
            ("bench/eval_simulator.py", "--hours", "6", "--learn", "--clean-learning")),
    Section("Anomaly-free streams of shapes from the field",
            "Every alarm is false: counts, quantized values, bursts, levels that move for good.",
            ("bench/eval_quiet.py",)),
]

PERFORMANCE = [
    Section("Scoring core",
            "Single readings through the numpy forest against scikit-learn's score_samples, same model, same run.",
            ("bench/bench_scoring.py",)),
    Section("Learning on the device",
            "Fit times, per-reading cost of a learning sensor, model size.",
            ("bench/bench_learning.py",)),
    Section("Refits and many learned sensors",
            "Verdict latency at 1,000 readings/s while 100 learned sensors refit, by where fits run (same run, with a "
            "no-refit control); the memory of 1,000 learned sensors.",
            ("bench/bench_refits.py",)),
    Section("End to end over MQTT",
            "The agent as a subprocess behind its own Mosquitto, against a no-model echo: throughput with QoS 1 in "
            "and out, latency at a paced rate, RSS after 100 sensors.",
            ("bench/bench_e2e.py",)),
]

FAULTS = [
    Section("Fault scenarios",
            "Every reading the broker accepted must be answered: the agent killed, stopped, or restarted with a backlog "
            "queued; the broker restarted or away; a burst; floods and hostile input. Peak RSS is the agent's "
            "(VmHWM of its last process); p99 latency from publish to verdict where the scenario measures it.",
            ("bench/faults.py",)),
    Section("A 500,000-reading backlog",
            "The agent stopped while half a million readings queue in its session, then started: answered in full? "
            "at what memory?",
            ("bench/faults.py", "--only", "backlog-500k")),
    Section("Does the broker keep to the receive maximum?",
            "A plain paho client with manual acknowledgements against the same Mosquitto: what bounds the readings "
            "an agent holds (docs/broker.md).",
            ("bench/receive_maximum.py",)),
]

PAGES = {
    "detection": ("Detection results", DETECTION),
    "performance": ("Performance results", PERFORMANCE),
    "faults": ("Fault results", FAULTS),
}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()


def provenance() -> str:
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = " with uncommitted changes" if _git("status", "--porcelain", "--untracked-files=no") else ""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    return f"Generated by `python bench/report.py` on commit `{commit}`{dirty}, {when}, on {machine}."


def run(section: Section) -> str:
    command = " ".join(("python", *(a.replace(str(REPO.parent), "..") for a in section.args)))
    started = time.monotonic()
    done = subprocess.run([sys.executable, *section.args], cwd=REPO, capture_output=True, text=True, check=False)
    took = time.monotonic() - started
    out = done.stdout.strip()
    if done.returncode != 0:
        out += f"\n\n(exited {done.returncode}: {done.stderr.strip()[-500:]})"
    print(f"{section.title}: {took:.0f} s", file=sys.stderr)
    return f"## {section.title}\n\n{section.why}\n\n`{command}` ({took:.0f} s)\n\n{out}\n"


def write_page(name: str) -> Path:
    title, sections = PAGES[name]
    body = [f"# {title}\n", provenance() + " Every figure below was printed by the command above it, in that run.\n"]
    body += [run(s) for s in sections]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(body))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", choices=[*PAGES, "all"])
    args = ap.parse_args()
    for name in PAGES if args.page == "all" else [args.page]:
        print(write_page(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
