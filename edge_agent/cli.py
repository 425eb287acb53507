"""The ``edge-agent`` command: run, check-config, train, replay, evaluate, demo."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config import AgentConfig, ConfigError, LearningConfig, load_config
from edge_agent.tools.progress import Progress

if TYPE_CHECKING:
    from edge_agent.agent import Agent
    from edge_agent.core.engine import Decision, LearningPlan
    from edge_agent.core.model import SensorModel
    from edge_agent.jetstream.group_agent import GroupAgent
    from edge_agent.tools.replay import ReplayRow
    from edge_agent.tools.table import SensorTable

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=None, help="YAML config file (default: built-in defaults)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key by dotted path, e.g. --set mqtt.host=broker (repeatable)",
    )


def _load(args: argparse.Namespace) -> AgentConfig:
    return load_config(args.config, args.overrides, os.environ)


def _config_base(args: argparse.Namespace) -> Path:
    """Relative paths in a config file are taken from the file's folder."""
    return Path(args.config).resolve().parent if args.config else Path.cwd()


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent, load_models
    from edge_agent.core.model import ModelError

    cfg = _load(args)
    _setup_logging(cfg.log_level)
    try:
        models = load_models(cfg, _config_base(args))
    except ModelError as e:
        print(f"edge-agent: cannot load model: {e}", file=sys.stderr)
        return EXIT_FAILURE
    agent: Agent | GroupAgent
    if cfg.nats.enabled:
        group = _nats_module("edge_agent.jetstream.group_agent")
        if group is None:
            return EXIT_FAILURE
        agent = group.GroupAgent(cfg, models, base=_config_base(args))
    else:
        agent = Agent(cfg, models, base=_config_base(args))
    try:
        return agent.run()
    except OSError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        agent.stop(timeout=1.0)
        return EXIT_FAILURE


def _nats_module(name: str) -> Any:
    """Import a module that needs nats-py (the optional extra `nats`), or say how to get it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != "nats":
            raise
        print("edge-agent: nats.enabled and the bridge need nats-py: pip install 'edge-anomaly-agent[nats]'", file=sys.stderr)
        return None


def cmd_bridge(args: argparse.Namespace) -> int:
    """MQTT readings into the JetStream stream (docs/operations.md#scale-out)."""
    import signal
    import threading

    from prometheus_client import CollectorRegistry

    cfg = _load(args)
    _setup_logging(cfg.log_level)
    module = _nats_module("edge_agent.jetstream.bridge")
    if module is None:
        return EXIT_FAILURE
    bridge = module.Bridge(cfg, CollectorRegistry(), dict(os.environ))
    wake = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: wake.set())
    try:
        bridge.start()
    except (ConnectionError, OSError) as e:
        print(f"edge-agent bridge: {e}", file=sys.stderr)
        return EXIT_FAILURE
    while not wake.wait(1.0):
        pass
    bridge.stop()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from edge_agent.agent import load_models
    from edge_agent.core.model import ModelError
    from edge_agent.jetstream.access import nats_access

    cfg = _load(args)
    # The NATS secrets and certificates (the bridge uses them even with nats.enabled off): a ConfigError naming the key.
    access = nats_access(cfg, os.environ)
    try:
        models = load_models(cfg, _config_base(args))
    except ModelError as e:
        print(f"edge-agent: config is valid, but a model is not: {e}", file=sys.stderr)
        return EXIT_FAILURE
    nats_text = ""
    if cfg.nats.enabled or access.summary != "no authentication":
        nats_text = f", NATS {', '.join(cfg.nats.servers)} with {access.summary}"
    print(f"config OK: agent {cfg.agent_id}, broker {cfg.mqtt.host}:{cfg.mqtt.port}{nats_text}, "
          f"{len(models)} model(s): {', '.join(f'{m.name}@{m.version}' for m in models.values())}")
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    from edge_agent.config import config_reference_markdown, config_reference_page

    sys.stdout.write(config_reference_page() if args.page else config_reference_markdown())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from edge_agent.model_files import save_model
    from edge_agent.tools.table import TableError, read_table
    from edge_agent.tools.training import TrainingError, train_model

    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    transforms = [t.strip() for t in args.features.split(",")] if args.features else None
    out = Path(args.out)
    try:
        table = read_table(args.input, columns)
        kwargs: dict[str, Any] = {"transforms": transforms} if transforms else {}
        progress = Progress(len(table), f"features of {Path(args.input).name}", quiet=args.quiet)
        model, estimator = train_model(
            table, name=args.name or out.name, version=args.model_version, sensor_pattern=args.sensors,
            trees=args.trees, seed=args.seed, command=shlex.join(["edge-agent", *sys.argv[1:]]) if args.record_command else "",
            progress=progress.update, **kwargs,
        )
        progress.close()
    except (TableError, TrainingError, ValueError) as e:
        print(f"edge-agent train: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("sklearn", "joblib"):
            raise
        print("edge-agent train: training needs scikit-learn and joblib, which are not installed: "
              "pip install 'edge-anomaly-agent[train]' (from a checkout: pip install '.[train]')", file=sys.stderr)
        return EXIT_FAILURE
    saved = save_model(model, out, estimator)
    print(f"trained {saved.name}@{saved.version} on {model.manifest['training']['rows']} rows, "
          f"fields {', '.join(saved.fields)}, {len(saved.spec.names)} features -> {out} (forest sha256 {saved.sha256})")
    return 0


def _min_learn_rows() -> int:
    """learning.rows' lower bound, which --learn-rows shares."""
    return int(next(f.metadata["min"] for f in dataclasses.fields(LearningConfig) if f.name == "rows"))


# Without --learn-rows, a file too short for learning.rows to be under this share of it
# learns from this share of it instead (the "probationary period" of the NAB benchmark).
SHORT_FILE_LEARN_SHARE = 0.15


def _replay_learn_rows(learn_rows: int | None, configured: int, table_rows: int) -> int:
    """--learn-rows if given; else learning.rows, unless the file is too short for it."""
    if learn_rows is not None:
        return learn_rows
    if configured <= table_rows * SHORT_FILE_LEARN_SHARE:
        return configured
    # A backtest of a short file: learn from its first 15 %, as NAB's probation does.
    rows = max(_min_learn_rows(), int(table_rows * SHORT_FILE_LEARN_SHARE))
    print(f"edge-agent replay: {table_rows} rows: learning from the first {rows} (15 %) instead of "
          f"learning.rows {configured}; --learn-rows sets it", file=sys.stderr)
    return rows


def _replay_setup(args: argparse.Namespace, command: str) -> tuple[AgentConfig, Decision, list[str] | None] | None:
    """The config, decision rule and value columns of a replay; None (said why) for too few --learn-rows."""
    from edge_agent.agent import decision_of

    cfg = _load(args)
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    if args.learn_rows is not None and args.learn_rows < _min_learn_rows():
        print(f"edge-agent {command}: --learn-rows {args.learn_rows} is too few; at least {_min_learn_rows()} (as for learning.rows)", file=sys.stderr)
        return None
    return cfg, decision_of(cfg), columns


def _learned_rows(
    args: argparse.Namespace, command: str, table: SensorTable, plan: LearningPlan, decision: Decision, progress: Progress
) -> list[ReplayRow] | None:
    """The table replayed as the live agent learns an unknown sensor; None (said why) when nothing is left to score."""
    from edge_agent.tools.replay import replay_learning

    if plan.rows >= len(table):
        flag = "--learn-rows" if args.learn_rows is not None else "learning.rows"
        print(f"edge-agent {command}: {flag} {plan.rows} leaves nothing to score in {len(table)} rows "
              "(lower it, or pass --model)", file=sys.stderr)
        return None
    return replay_learning(table, plan, decision, progress=progress.update)


def _pinned_model(cfg: AgentConfig, model_dir: Path) -> SensorModel:
    """A model directory loaded with the config's pins for its forest and its manifest."""
    from edge_agent.model_files import load_model

    return load_model(model_dir, cfg.models.pinned_sha256.get(model_dir.name),
                      pinned_manifest_sha256=cfg.models.pinned_manifest_sha256.get(model_dir.name))


def _plotted(path: str, table: SensorTable, rows: Sequence[ReplayRow], threshold: float, command: str) -> bool:
    """Draw a replay's plot; False (said why) when it cannot be drawn."""
    from edge_agent.tools.plot import plot_replay

    try:
        plot_replay(path, table, rows, threshold)
    except RuntimeError as e:
        print(f"edge-agent {command}: {e}", file=sys.stderr)
        return False
    return True


def cmd_replay(args: argparse.Namespace) -> int:
    from edge_agent.agent import learning_plan
    from edge_agent.core.durations import Duration
    from edge_agent.core.model import ModelError
    from edge_agent.tools.replay import replay, write_replay
    from edge_agent.tools.table import TableError, read_table
    from edge_agent.tools.training import TrainingError

    setup = _replay_setup(args, "replay")
    if setup is None:
        return EXIT_USAGE
    cfg, decision, columns = setup
    try:
        if args.model is None:
            # Like the live agent with a sensor no model is assigned to: learn, score, refit.
            # So whatever learning.enabled says: the default model knows one kind of sensor
            # and would find any other file anomalous from its first row.
            table = read_table(args.input, columns)
            plan = learning_plan(cfg, rows=_replay_learn_rows(args.learn_rows, cfg.learning.rows, len(table)))
            progress = Progress(len(table), f"replaying {Path(args.input).name}", quiet=args.quiet)
            rows = _learned_rows(args, "replay", table, plan, decision, progress)
            if rows is None:
                return EXIT_USAGE
            described = f"a model learned from the first {plan.rows} rows" + (
                f", refitted every {Duration(plan.refit_every)} of the file's time" if plan.refit_every else "")
        else:
            model = _pinned_model(cfg, Path(args.model))
            table = read_table(args.input, columns, prefer=model.fields)
            progress = Progress(len(table), f"replaying {Path(args.input).name}", quiet=args.quiet)
            rows = replay(table, model, decision, progress=progress.update)
            described = f"{model.name}@{model.version}"
        progress.close()
    except (TableError, TrainingError, ModelError, ValueError) as e:
        print(f"edge-agent replay: {e}", file=sys.stderr)
        return EXIT_USAGE
    write_replay(args.out, table, rows)
    if args.plot and not _plotted(args.plot, table, rows, decision.threshold, "replay"):
        return EXIT_FAILURE
    scored = [r for r in rows if not r.learning]
    flagged = sum(r.verdict.anomaly for r in scored)
    print(f"replayed {len(rows)} rows with {described}: {len(scored)} scored, {flagged} anomalous -> {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from edge_agent.agent import learning_plan
    from edge_agent.core.model import ModelError
    from edge_agent.tools.evaluate import evaluate, read_labelled, report
    from edge_agent.tools.replay import replay, write_replay
    from edge_agent.tools.table import TableError
    from edge_agent.tools.training import TrainingError

    setup = _replay_setup(args, "evaluate")
    if setup is None:
        return EXIT_USAGE
    cfg, decision, columns = setup
    try:
        table = read_labelled(args.input, args.labels, columns)
        progress = Progress(len(table), f"replaying {Path(args.input).name}", quiet=args.quiet)
        if args.model is None:
            plan = learning_plan(cfg, rows=_replay_learn_rows(args.learn_rows, cfg.learning.rows, len(table)))
            learned = _learned_rows(args, "evaluate", table, plan, decision, progress)
            if learned is None:
                return EXIT_USAGE
            rows = learned
        else:
            rows = replay(table, _pinned_model(cfg, Path(args.model)), decision, progress=progress.update)
        progress.close()
    except (TableError, TrainingError, ModelError, ValueError) as e:
        print(f"edge-agent evaluate: {e}", file=sys.stderr)
        return EXIT_USAGE
    assert table.labels is not None
    print(report(evaluate(rows, table.labels, table.timestamps), args.input))
    if args.out:
        write_replay(args.out, table, rows)
    if args.plot and not _plotted(args.plot, table, rows, decision.threshold, "evaluate"):
        return EXIT_FAILURE
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge_agent.tools.demo import run_demo

    return run_demo(args)


class _Version(argparse.Action):
    """``--version``: the installed package's version, looked up only when asked (the agent's memory budget)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, default: str = argparse.SUPPRESS,
                 help: str | None = None) -> None:  # noqa: A002 - argparse's name
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from edge_agent import package_version

        print(f"edge-agent {package_version('(not installed: running from a source tree)')}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="MQTT edge agent: scores sensor readings with an Isolation Forest.")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the agent")
    _config_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bridge", help="forward MQTT readings into the NATS JetStream stream of the agent group")
    _config_args(p)
    p.set_defaults(func=cmd_bridge)

    p = sub.add_parser("check-config", help="validate the config (and load its models), then exit")
    _config_args(p)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("config-reference", help="print every config key, its type, default and meaning (markdown)")
    p.add_argument("--page", action="store_true",
                   help="the whole of docs/configuration.md: edge-agent config-reference --page > docs/configuration.md")
    p.set_defaults(func=cmd_config_reference)

    p = sub.add_parser("train", help="fit a model on normal readings from a CSV")
    p.add_argument("--input", "-i", required=True, help="CSV with a header; labelled anomalies (anomaly=1) are left out")
    p.add_argument("--columns", help="comma-separated value columns (default: every non-meta column)")
    p.add_argument("--out", "-o", required=True, help="model directory to write, e.g. models/pump")
    p.add_argument("--name", help="model name (default: the --out folder's name)")
    p.add_argument("--model-version", help="version string (default: UTC time of training)")
    p.add_argument("--sensors", help="only rows whose sensor_id matches this glob, e.g. 'vibration-*'")
    p.add_argument("--features", help="feature transforms, e.g. value,delta,mean_dev:10,std:10")
    p.add_argument("--trees", type=int, default=100, help="trees in the forest (default 100)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-record-command", dest="record_command", action="store_false", help="do not store the command line in the manifest")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("replay", help="score a CSV as a stream (backtest)")
    p.add_argument("input", help="CSV: optional timestamp column and numeric columns, one reading per row")
    p.add_argument("--out", "-o", required=True, help="CSV to write: the input plus score, raw_score, anomaly, phase, onset")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--model", help="model directory (default: learn from the file as the live agent learns an unknown sensor, with the config's learning.* settings)")
    group.add_argument("--learn-rows", type=int, help="learn from the first N rows (default: learning.rows, or 15%% of a file too short for it), score the rest, refit as configured")
    p.add_argument("--columns", help="comma-separated value columns")
    p.add_argument("--plot", metavar="PNG", help="also draw the series, the score and the flagged stretches (needs matplotlib)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    _config_args(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("evaluate", help="replay a labelled CSV and report F1, false alarms and delay per event")
    p.add_argument("input", help="CSV: optional timestamp column, numeric value columns and a 0/1 label column")
    p.add_argument("--labels", required=True, metavar="COLUMN", help="the label column: non-zero marks an anomalous row")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--model", help="model directory (default: learn from the file's first rows, as replay does)")
    group.add_argument("--learn-rows", type=int, help="learn from the first N rows (default as in replay); they are not counted")
    p.add_argument("--columns", help="comma-separated value columns (default: every column but the label and the timestamp)")
    p.add_argument("--out", "-o", help="also write the replayed rows as replay does")
    p.add_argument("--plot", metavar="PNG", help="also draw the series, the score, the flagged and the labelled stretches")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    _config_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="start a broker, the simulator and the agent, and show verdicts")
    p.add_argument("--config", "-c", default="config.yaml", help="agent config (default: ./config.yaml; built-in defaults if missing)")
    p.add_argument("--sensors", type=int, default=4, help="simulated sensors (default 4)")
    p.add_argument("--rate", type=float, default=1.0, help="readings per second per sensor (default 1, the rate the shipped models were trained at)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--anomaly-rate", type=float, default=0.005, help="anomalies injected per reading of a sensor (default 0.005: one every few minutes per sensor)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--broker", choices=["own", "configured", "mosquitto", "embedded", "auto"], default="own",
                   help="own (default; auto is the same): a broker of its own, mosquitto if installed, else an embedded one; "
                        "configured: the config's broker. Either way the demo leaves no session and no retained message behind")
    p.add_argument("--broker-port", type=int, default=None, metavar="PORT", help="port of the demo's own broker (default: a free one)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"edge-agent: invalid config:\n{e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edge-agent config-reference | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
