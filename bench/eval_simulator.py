"""Detection quality on labelled simulator streams, through the same engine as the live agent.

Usage: python -m bench.eval_simulator [--sensors 24] [--hours 6] [--seed 101] [--config config.yaml] [--learn [--clean-learning] [--glitch 10]] [--set key=value]

Prints, per anomaly kind, the share of injections detected (at least one alert
inside the injected stretch or within --grace readings after it), the share detected
before the stretch ended (a drift that snaps back is easy to see when it ends), the median delay
from the start of the injection to the first alert (in readings), and false alarms
per sensor-hour (alerts outside any injection and its grace period). A second table
gives both shares per kind of sensor: each kind has its own shipped model.

By default the shipped models score the sensors. With --learn no model is assigned:
every sensor learns its own on the way, as the agent does for a sensor it does not
know (the config's learning.* settings, refits included); readings answered while
learning, and injections that start among them, are left out of the figures. Injections
start anywhere, learning readings included (anomalies while a sensor learns); with
--clean-learning none starts among them, as NAB's and SKAB's protocols learn from normal data.
--glitch N moves one reading halfway through each sensor's learning readings N noise widths up.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from edge_agent.agent import build_engine, decision_of, learning_plan, load_models
from edge_agent.config import load_config
from edge_agent.core.domain import Reading, Verdict
from edge_agent.tools.replay import learn_and_score
from simulator.streams import SimReading, Simulation

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Outcome:
    """One injection: readings to its first alert (None: never found) and its length."""

    delay: int | None
    length: int

    @property
    def before_end(self) -> bool:
        """Found while it lasted, not only in the grace readings after it (a drift's snap-back)."""
        return self.delay is not None and self.delay < self.length


def injection_outcomes(
    rows: list[tuple[int, int, str, int]], left_out: set[int], grace: int
) -> tuple[list[tuple[str, Outcome]], int]:
    """One sensor's scored readings in order, as (anomaly_id, label, kind, alert): each
    injection's outcome (those in ``left_out`` skipped) and the false alarms, a run of
    consecutive alerts outside every injection and its ``grace`` readings counting once."""
    spans: dict[int, list[int]] = defaultdict(list)
    for i, (aid, _, _, _) in enumerate(rows):
        if aid and aid not in left_out:
            spans[aid].append(i)
    outcomes = []
    covered: set[int] = set()
    for idx in spans.values():
        start, end = idx[0], idx[-1] + grace
        covered.update(range(start, end + 1))
        alerts = [i for i in range(start, min(end + 1, len(rows))) if rows[i][3]]
        outcomes.append((rows[start][2], Outcome(alerts[0] - start if alerts else None, len(idx))))
    false_alarms = 0
    prev = False
    for i, row in enumerate(rows):
        fa = bool(row[3]) and i not in covered
        if fa and not prev:
            false_alarms += 1
        prev = fa
    return outcomes, false_alarms


def with_glitches(readings: list[SimReading], sigma: dict[str, float], nth: int, sigmas: float) -> list[SimReading]:
    """The readings with each sensor's ``nth`` reading (from 0) moved up by ``sigmas`` of its noise width."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for r in readings:
        moved = r
        if seen[r.sensor_id] == nth:
            moved = dataclasses.replace(r, value=round(r.value + sigmas * sigma[r.sensor_id], 4))
        seen[r.sensor_id] += 1
        out.append(moved)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sensors", type=int, default=24,
                    help="sensors of the four kinds in turn (24: six of each, as many as a shipped model learned from)")
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=101, help="a seed the shipped models were not trained on (they use 7)")
    ap.add_argument("--grace", type=int, default=10, help="readings after an injection in which an alert still counts")
    ap.add_argument("--config", default=str(REPO / "config.yaml"))
    ap.add_argument("--learn", action="store_true", help="no shipped models: every sensor learns its own (learning.* settings)")
    ap.add_argument("--clean-learning", action="store_true",
                    help="with --learn: no injection starts among a sensor's learning.rows first readings")
    ap.add_argument("--glitch", type=float, metavar="SIGMAS",
                    help="with --learn: one reading halfway through each sensor's learning readings is off by this many noise widths (a bad reading while it learns)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="config overrides, e.g. learning.leave_out_outliers=false or decision.k=2")
    args = ap.parse_args()

    cfg = load_config(args.config, args.overrides if args.learn else [*args.overrides, "learning.enabled=false"], {})
    warmup = cfg.learning.rows if args.learn and args.clean_learning else 0
    sim = Simulation(n_sensors=args.sensors, rate=1.0, seed=args.seed, start=1_767_225_600.0, warmup=warmup)
    readings = list(sim.iter_readings(duration=args.hours * 3600))
    if args.glitch and args.learn:
        readings = with_glitches(readings, {s.sensor_id: s.sigma for s in sim.sensors}, cfg.learning.rows // 2, args.glitch)
    as_readings = [Reading(r.sensor_id, {"value": r.value}, float(i), ts=r.ts, ts_raw=r.ts) for i, r in enumerate(readings)]
    if args.learn:
        verdicts = [v for _, v in learn_and_score(as_readings, learning_plan(cfg), decision_of(cfg)) if isinstance(v, Verdict)]
    else:
        engine = build_engine(cfg, load_models(cfg, Path(args.config).resolve().parent))
        verdicts = []
        for start in range(0, len(as_readings), 256):
            verdicts += [v for v in engine.score(as_readings[start:start + 256]).results if isinstance(v, Verdict)]
    assert len(verdicts) == len(readings)

    # Per sensor: each scored reading's injection and alert, in stream order (learning readings left out).
    per_sensor: dict[str, list[tuple[int, int, str, int]]] = defaultdict(list)  # (anomaly_id, label, kind, alert)
    learning_ids: set[int] = set()
    for r, v in zip(readings, verdicts, strict=True):
        if v.learning:
            learning_ids.add(r.anomaly_id)
            continue
        per_sensor[r.sensor_id].append((r.anomaly_id, r.anomaly, r.anomaly_kind, v.anomaly))

    detected: dict[str, list[Outcome]] = defaultdict(list)
    by_sensor_kind: dict[tuple[str, str], list[Outcome]] = defaultdict(list)  # (sensor kind, anomaly kind)
    sensor_kind = {s.sensor_id: s.kind for s in sim.sensors}
    false_alarms = 0
    kind_false_alarms: dict[str, int] = defaultdict(int)
    kind_hours: dict[str, float] = defaultdict(float)
    for sensor_id, rows in per_sensor.items():
        outcomes, sensor_false_alarms = injection_outcomes(rows, learning_ids, args.grace)
        for kind, outcome in outcomes:
            detected[kind].append(outcome)
            by_sensor_kind[sensor_kind[sensor_id], kind].append(outcome)
        false_alarms += sensor_false_alarms
        kind_false_alarms[sensor_kind[sensor_id]] += sensor_false_alarms
        kind_hours[sensor_kind[sensor_id]] += len(rows) / 3600

    hours = sum(len(rows) for rows in per_sensor.values()) / 3600
    if not hours:
        print(f"nothing scored: every reading of {args.hours} h was a learning one (learning.rows)", file=sys.stderr)
        return 1
    how = "shipped models (from"
    if args.learn:
        glitch = f", one reading off by {args.glitch:g} noise widths halfway through" if args.glitch else ""
        how = f"each sensor learning its own model{' from clean readings' if args.clean_learning else ''}{glitch} (learning.* of"
    print(f"simulator: {args.sensors} sensors x {args.hours} h at 1 reading/s, seed {args.seed}; "
          f"{len(readings)} readings; {how} {args.config})\n")
    print("| anomaly kind | injections | detected | detected before it ended | median delay (readings) |")
    print("|---|---|---|---|---|")
    for kind in sorted(detected):
        found = detected[kind]
        hits = [o.delay for o in found if o.delay is not None]
        during = sum(1 for o in found if o.before_end)
        med = f"{statistics.median(hits):.0f}" if hits else "-"
        print(f"| {kind} | {len(found)} | {len(hits) / len(found):.0%} | {during / len(found):.0%} | {med} |")
    sensor_kinds = sorted(kind_hours)
    print("\ndetected / detected before it ended, per kind of sensor (injections in brackets):\n")
    print(f"| anomaly kind | {' | '.join(sensor_kinds)} |")
    print(f"|---|{'---|' * len(sensor_kinds)}")
    for kind in sorted(detected):
        cells = []
        for sk in sensor_kinds:
            found = by_sensor_kind.get((sk, kind), [])
            found_in_time = sum(1 for o in found if o.delay is not None)
            during = sum(1 for o in found if o.before_end)
            cells.append(f"{found_in_time / len(found):.0%} / {during / len(found):.0%} ({len(found)})" if found else "-")
        print(f"| {kind} | {' | '.join(cells)} |")
    print(f"| false alarms per sensor-hour | {' | '.join(f'{kind_false_alarms[sk] / kind_hours[sk]:.2f}' for sk in sensor_kinds)} |")
    print(f"\nfalse alarms: {false_alarms} in {hours:.0f} sensor-hours = {false_alarms / hours:.2f} per sensor per hour")
    return 0


if __name__ == "__main__":
    sys.exit(main())
