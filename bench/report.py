"""Regenerate the results pages from the benchmarks: one command, every table, with the commit and date.

Usage:
  python -m bench.report detection      # -> docs/results/detection.md
  python -m bench.report performance    # -> docs/results/performance.md
  python -m bench.report faults         # -> docs/results/faults.md
  python -m bench.report all

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
import re
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
            ("-m", "bench.eval_nab", "-q")),
    Section("Industrial pump (SKAB, the subset in shared/)",
            "The benchmark's protocol (first 400 rows of each experiment learned, the rest scored), pooled F1, "
            "false- and missed-alarm rates.",
            ("-m", "bench.eval_skab", "-q")),
    Section("Simulator, shipped models",
            "24 simulated sensors, 6 hours each, anomalies injected: share found, share found before they ended, "
            "delay, false alarms.",
            ("-m", "bench.eval_simulator", "--hours", "6")),
    Section("Simulator, every sensor learning its own model",
            "As above, but no model is assigned: each sensor learns from its first readings (none injected there).",
            ("-m", "bench.eval_simulator", "--hours", "6", "--learn", "--clean-learning")),
    Section("Anomaly-free streams of shapes from the field",
            "Every alarm is false: counts, quantized values, bursts, levels that move for good.",
            ("-m", "bench.eval_quiet",)),
]

PERFORMANCE = [
    Section("Scoring core",
            "Single readings through the numpy forest against scikit-learn's score_samples, same model, same run.",
            ("-m", "bench.bench_scoring",)),
    Section("Learning on the device",
            "Fit times, per-reading cost of a learning sensor, model size.",
            ("-m", "bench.bench_learning",)),
    Section("Memory per sensor",
            "Heap a sensor costs as it reports (tracemalloc, the shipped config.yaml), and its learned model.",
            ("-m", "bench.bench_sensor_memory")),
    Section("Per-sensor /metrics series",
            "What a sensor's series cost the agent: its first verdict, a known sensor's, a render, an eviction; "
            "prometheus_client's labelled children on the same verdicts, same run.",
            ("-m", "bench.bench_metrics")),
    Section("Refits and many learned sensors",
            "Verdict latency at 1,000 readings/s while 100 learned sensors refit, by where fits run (same run, with a "
            "no-refit control); the memory of 1,000 learned sensors.",
            ("-m", "bench.bench_refits")),
    Section("End to end over MQTT",
            "The agent as a subprocess behind its own Mosquitto, against a no-model echo: throughput with QoS 1 in "
            "and out, latency at a paced rate, RSS after 100 sensors, and the system calls a reading costs each "
            "(strace, a run of its own).",
            ("-m", "bench.bench_e2e",)),
    Section("Past one machine: the NATS JetStream consumer group",
            "The same readings through 1, 2 and 3 agent processes of one group on this machine: verdicts/s and agent "
            "CPU per reading (readings published straight into the stream; the bridge and Mosquitto not counted).",
            ("-m", "bench.bench_group")),
]

FAULTS = [
    Section("Fault scenarios",
            "Every reading the broker accepted must be answered: the agent killed, stopped, or restarted with a backlog "
            "queued; the broker restarted or away; a burst; floods and hostile input; new sensors learning while the "
            "state dir cannot be written, and many finishing learning together. Peak RSS is the agent's "
            "(VmHWM of its last process); p99 latency from publish to verdict where the scenario measures it.",
            ("-m", "bench.faults")),
    Section("A backlog of 500,000 readings",
            "The agent stopped while 500,000 readings queue in its session (the broker's queue limit raised to hold "
            "them), then started: every reading answered, its memory, drain rate and the readings it held at once.",
            ("-m", "bench.faults", "--only", "backlog-500k")),
    Section("1,500 sensors finishing learning together",
            "1,500 new sensors reach the end of learning within one round and report until each scores with its own "
            "model: every reading answered, the fits, the \"learner busy\" lines, the agent's peak threads and RSS and "
            "the fit process's.",
            ("-m", "bench.faults", "--only", "together-1500")),
    Section("Does the broker keep to the receive maximum?",
            "A plain paho client with manual acknowledgements against the same Mosquitto: what bounds the readings "
            "an agent holds (docs/broker.md).",
            ("-m", "bench.receive_maximum")),
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
    # Other work on the machine skews every timing below: the load it started under says how much.
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"Generated by `python -m bench.report` on commit `{commit}`{dirty}, {when}, on {machine}, "
            f"load average {load} at the start.")


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


README = REPO / "README.md"
FIGURES_START = "<!-- figures: written by python -m bench.report from docs/results/; do not edit by hand -->"
FIGURES_END = "<!-- end of figures -->"
# (page, label, pattern): the first group of the pattern's first match in that page is the figure.
HEADLINES = (
    ("detection", "NAB dev, standard profile: per-reading score (one corpus threshold)",
     r"\| per-reading score, best corpus threshold[^|]*\|(?:[^|]*\|){3}\s*([0-9.-]+)"),
    ("detection", "NAB dev, standard profile: the agent's alert onsets", r"\| episode onsets \|(?:[^|]*\|){3}\s*([0-9.-]+)"),
    ("detection", "SKAB: F1 / FAR % (scikit-learn model of the first 400 rows)",
     r"\| \*\*edge-agent, scikit-learn model[^|]*\| \*\*([0-9.]+)\*\* \| \*\*([0-9.]+)\*\*"),
    ("detection", "SKAB: F1 / FAR % (learning on the device)",
     r"\| \*\*edge-agent learning on the device[^|]*\| \*\*([0-9.]+)\*\* \| \*\*([0-9.]+)\*\*"),
    ("performance", "End to end over MQTT: readings/s, QoS 1 in and out", r"\| agent throughput, QoS 1 in/out[^|]*\| ([0-9,]+) readings/s"),
    ("performance", "End to end: p99 latency at 1,000 readings/s", r"\| agent latency at 1,000/s for 10 s: p99 \| ([0-9.]+ ms)"),
    ("performance", "Agent peak RSS after 100 sensors", r"\| agent peak RSS after 100 sensors[^|]*\| ([0-9.]+ MB)"),
    ("performance", "Scoring core: single readings/s, a shared model / a learned one",
     r"\| single reading \(score_one\), wide[^|]*\|[^|]*\| ([0-9,]+) \|[\s\S]*?\| single reading \(score_one\), compact[^|]*\|[^|]*\| ([0-9,]+) \|"),
    ("performance", "Consumer group: SIGKILL to every moved sensor scored again (default timings)",
     r"\| defaults \(member_ttl[^|]*\| ([0-9.]+ s) \|"),
    ("faults", "Restart with 500,000 readings waiting: answered / agent peak RSS",
     r"\| agent restarted with 500000 readings queued \| \d+ \| \d+ \| (\d+) \| \d+ \| [^|]*\| (\d+ MiB) \|"),
)


def headlines() -> list[str]:
    """The README's figure lines, each taken from a generated page, with the page's commit."""
    rows = ["| figure | value | from |", "|---|---|---|"]
    for page, label, pattern in HEADLINES:
        path = RESULTS / f"{page}.md"
        text = path.read_text() if path.exists() else ""
        found = re.search(pattern, text)
        commit = re.search(r"on commit `([0-9a-f]+)`", text)
        value = " / ".join(found.groups()) if found else "not measured"
        where = f"[{page}.md](docs/results/{page}.md) at `{commit.group(1)}`" if commit else f"docs/results/{page}.md"
        rows.append(f"| {label} | {value} | {where} |")
    faults = RESULTS / "faults.md"
    if faults.exists():
        text = faults.read_text()
        section = text.split("## Fault scenarios", 1)[-1].split("\n## ", 1)[0]
        scenarios = [line.split("|") for line in section.splitlines() if re.match(r"\| [^-|][^|]* \| \d+ \| \d+ \| \d+ \| \d+ \|", line)]
        lost = sum(int(cells[5]) for cells in scenarios)
        commit = re.search(r"on commit `([0-9a-f]+)`", text)
        rows.append(f"| Fault scenarios: readings accepted and never answered, all {len(scenarios)} scenarios | {lost} | "
                    f"[faults.md](docs/results/faults.md) at `{commit.group(1) if commit else '?'}` |")
    return rows


def update_readme() -> None:
    text = README.read_text()
    start, end = text.index(FIGURES_START), text.index(FIGURES_END)
    block = "\n".join([FIGURES_START, *headlines()]) + "\n"
    README.write_text(text[:start] + block + text[end:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", choices=[*PAGES, "all", "readme"])
    args = ap.parse_args()
    if args.page != "readme":
        for name in PAGES if args.page == "all" else [args.page]:
            print(write_page(name))
    update_readme()
    return 0


if __name__ == "__main__":
    sys.exit(main())
