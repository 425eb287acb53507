"""`edge-sim`: publish simulated sensor readings over MQTT and/or write them, labelled, to CSV."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from simulator.streams import (
    ANOMALY_KINDS,
    CSV_HEADER,
    DEFAULT_ANOMALY_RATE,
    PROFILES,
    SENSOR_KINDS,
    SimReading,
    Simulation,
)

PASSWORD_ENV = "EDGE_SIM_MQTT_PASSWORD"


class BrokerError(Exception):
    """The broker could not be reached or refused the connection."""


@dataclass
class RunStats:
    """What a run did, for the closing summary line."""

    generated: int = 0
    published: int = 0
    acknowledged: int = 0
    rows: int = 0
    anomaly_kinds: dict[int, str] = field(default_factory=dict)
    first_ts: float | None = None
    last_ts: float | None = None
    interrupted: bool = False

    def record(self, reading: SimReading) -> None:
        self.generated += 1
        if reading.anomaly_id:
            self.anomaly_kinds.setdefault(reading.anomaly_id, reading.anomaly_kind)
        if self.first_ts is None:
            self.first_ts = reading.ts
        self.last_ts = reading.ts

    def summary(self, publishing: bool, csv_target: str | None, qos: int) -> str:
        parts = []
        if publishing:
            acked = f", {self.acknowledged} acknowledged" if qos > 0 else ""
            parts.append(f"published {self.published} readings{acked}")
        else:
            parts.append(f"generated {self.generated} readings")
        if csv_target is not None:
            parts.append(f"{self.rows} CSV rows to {'stdout' if csv_target == '-' else csv_target}")
        by_kind = Counter(self.anomaly_kinds.values())
        detail = ", ".join(f"{k}={by_kind[k]}" for k in ANOMALY_KINDS if by_kind[k])
        parts.append(f"{len(self.anomaly_kinds)} anomalies injected" + (f" ({detail})" if detail else ""))
        if self.first_ts is not None and self.last_ts is not None:
            parts.append(f"simulated {self.first_ts:.3f}..{self.last_ts:.3f}")
        stopped = " (stopped early)" if self.interrupted else ""
        return "edge-sim: " + "; ".join(parts) + stopped


class Publisher:
    """A paho-mqtt client publishing readings as JSON on ``{prefix}/{sensor_id}``."""

    def __init__(self, host: str, port: int, topic_prefix: str, qos: int, client_id: str,
                 username: str | None = None, password: str | None = None,
                 keepalive: int = 30, seq: bool = False) -> None:
        self.host, self.port = host, port
        self.seq: dict[str, int] | None = {} if seq else None  # sensor -> last sequence number sent
        self.topic_prefix = topic_prefix.rstrip("/")
        self.qos = qos
        self.keepalive = keepalive
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._cond = threading.Condition()
        self._connack: ReasonCode | None = None
        self._closing = False
        self.published = 0
        self.acknowledged = 0

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason_code: ReasonCode, properties: Any) -> None:
        with self._cond:
            self._connack = reason_code
            self._cond.notify_all()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason_code: ReasonCode, properties: Any) -> None:
        connected = self._connack is not None and not self._connack.is_failure
        if connected and not self._closing:
            # paho reconnects by itself; QoS>0 messages queue meanwhile.
            print(f"edge-sim: lost the broker connection ({reason_code}); reconnecting",
                  file=sys.stderr)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                    reason_code: ReasonCode, properties: Any) -> None:
        with self._cond:
            self.acknowledged += 1
            self._cond.notify_all()

    def connect(self, timeout: float) -> None:
        """Connect and wait (at most ``timeout`` s) for the broker to accept us."""
        self._client.connect_timeout = timeout
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        try:
            self._client.connect(self.host, self.port, keepalive=self.keepalive)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot reach MQTT broker at {self.host}:{self.port}: {exc}") from None
        self._client.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self._connack is not None, timeout=timeout)
            connack = self._connack
        if connack is None or connack.is_failure:
            self._closing = True
            with contextlib.suppress(Exception):
                self._client.disconnect()
            self._client.loop_stop()
            reason = "no answer" if connack is None else str(connack)
            raise BrokerError(f"MQTT broker at {self.host}:{self.port} did not accept the connection: {reason}")

    def publish(self, reading: SimReading) -> None:
        body = reading.to_payload()
        if self.seq is not None:
            body["seq"] = self.seq[reading.sensor_id] = self.seq.get(reading.sensor_id, 0) + 1
        payload = json.dumps(body, separators=(",", ":"))
        info = self._client.publish(f"{self.topic_prefix}/{reading.sensor_id}", payload, qos=self.qos)
        # NO_CONN means queued for after the reconnect (QoS>0); anything else is a real loss.
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            with self._cond:
                self.published += 1

    def close(self, flush_timeout: float) -> None:
        """Wait for outstanding acknowledgements while they keep coming, then disconnect.

        Gives up once ``flush_timeout`` seconds pass without a new acknowledgement: a slow
        broker still working through a backlog is waited for, a gone one is not.
        """
        if self.qos > 0:
            with self._cond:
                while self.acknowledged < self.published:
                    before = self.acknowledged
                    self._cond.wait_for(lambda: self.acknowledged != before or self.acknowledged >= self.published,  # noqa: B023 - called in this iteration
                                        timeout=flush_timeout)
                    if self.acknowledged == before:
                        break
        self._closing = True
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()


class Pacer:
    """Holds each simulated instant back until the same wall-clock offset from the start."""

    def __init__(self, sim_start: float, stop: threading.Event) -> None:
        self._sim_start = sim_start
        self._wall_start = time.monotonic()
        self._stop = stop

    def wait_for(self, ts: float) -> bool:
        """Sleep until ``ts`` is due; False when asked to stop meanwhile."""
        delay = self._wall_start + (ts - self._sim_start) - time.monotonic()
        if delay > 0:
            return not self._stop.wait(delay)
        return not self._stop.is_set()


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {text}")
    return value


def _kind_list(allowed: Sequence[str]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        kinds = tuple(k.strip() for k in text.split(",") if k.strip())
        unknown = [k for k in kinds if k not in allowed]
        if unknown or not kinds:
            raise argparse.ArgumentTypeError(
                f"unknown kind(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}")
        return kinds
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-sim",
        description="Publish realistic simulated sensor readings with labelled anomalies.")
    p.add_argument("--host", default="localhost", help="MQTT broker host (default: localhost)")
    p.add_argument("--port", type=int, default=1883, help="MQTT broker port (default: 1883)")
    p.add_argument("--sensors", type=_positive_int, default=4, help="number of sensors (default: 4)")
    p.add_argument("--rate", type=_positive_float, default=1.0,
                   help="readings per second per sensor (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--duration", type=float, metavar="SEC",
                      help="simulated seconds to run (default: until interrupted)")
    stop.add_argument("--count", type=_non_negative_int, metavar="READINGS",
                      help="total readings (all sensors together) to produce")
    p.add_argument("--csv", metavar="FILE", help="also write labelled readings to FILE ('-': stdout)")
    p.add_argument("--no-publish", action="store_true",
                   help="do not connect to a broker; generate as fast as possible (needs --csv)")
    p.add_argument("--topic-prefix", default="sensors", help="topic prefix (default: sensors)")
    p.add_argument("--anomaly-rate", type=_fraction, default=DEFAULT_ANOMALY_RATE,
                   help="average anomalies per reading of each sensor (default: 1/600)")
    p.add_argument("--anomaly-kinds", type=_kind_list(ANOMALY_KINDS), default=ANOMALY_KINDS,
                   help=f"comma-separated anomaly kinds to inject (default: {','.join(ANOMALY_KINDS)})")
    p.add_argument("--kinds", type=_kind_list(tuple(PROFILES)), default=SENSOR_KINDS,
                   help=f"comma-separated sensor kinds, assigned round-robin (default: {','.join(SENSOR_KINDS)})")
    p.add_argument("--warmup", type=_non_negative_int, default=0, metavar="READINGS",
                   help="readings per sensor before the first anomaly may start (default: 0)")
    p.add_argument("--start", type=float, metavar="EPOCH",
                   help="timestamp of the first reading (default: now)")
    p.add_argument("--qos", type=int, choices=(0, 1, 2), default=1, help="MQTT QoS (default: 1)")
    p.add_argument("--client-id", default=None, help="MQTT client id (default: edge-sim-<pid>)")
    p.add_argument("--username", default=None,
                   help=f"MQTT user name (password from ${PASSWORD_ENV})")
    p.add_argument("--connect-timeout", type=_positive_float, default=10.0,
                   help="seconds to wait for the broker (default: 10)")
    p.add_argument("--flush-timeout", type=_positive_float, default=30.0, metavar="SEC",
                   help="at the end, wait for the broker's acknowledgements while they keep coming; give up after "
                        "SEC seconds without one and exit 3 naming the shortfall (default: 30)")
    p.add_argument("--seq", action="store_true",
                   help="add a per-sensor sequence number (seq) to each reading, so that gaps show drops "
                        "(the agent's seq_field, docs/broker.md)")
    return p


@contextlib.contextmanager
def _open_csv(target: str | None) -> Iterator[TextIO | None]:
    if target is None:
        yield None
    elif target == "-":
        yield sys.stdout
    else:
        with open(target, "w", newline="", encoding="utf-8") as fh:
            yield fh


@contextlib.contextmanager
def _stop_on_sigterm(stop: threading.Event) -> Iterator[None]:
    """Turn SIGTERM and SIGINT into a stop request (signal handlers only work on the main thread).

    A KeyboardInterrupt raised between a publish and its bookkeeping would make the
    summary undercount what was sent; a stop request lets the loop finish the reading.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run(args: argparse.Namespace, stop: threading.Event) -> int:
    """Generate, publish and/or write the readings that ``args`` describe."""
    sim = Simulation(
        n_sensors=args.sensors, rate=args.rate, seed=args.seed, anomaly_rate=args.anomaly_rate,
        start=args.start, kinds=args.kinds, anomaly_kinds=args.anomaly_kinds, warmup=args.warmup)
    publishing = not args.no_publish
    stats = RunStats()
    publisher: Publisher | None = None
    summary_out = sys.stderr if args.csv == "-" else sys.stdout
    if publishing:
        publisher = Publisher(
            args.host, args.port, args.topic_prefix, args.qos,
            client_id=args.client_id or f"edge-sim-{os.getpid()}",
            username=args.username, password=os.environ.get(PASSWORD_ENV), seq=args.seq)
        try:
            publisher.connect(args.connect_timeout)
        except BrokerError as exc:
            print(f"edge-sim: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            publisher.close(flush_timeout=0.0)
            return 0
    try:
        with _open_csv(args.csv) as fh:
            writer = None
            if fh is not None:
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(CSV_HEADER)
            pacer = Pacer(sim.start_ts, stop) if publisher is not None else None
            for reading in sim.iter_readings(count=args.count, duration=args.duration):
                if stop.is_set() or (pacer is not None and not pacer.wait_for(reading.ts)):
                    stats.interrupted = True
                    break
                stats.record(reading)
                if publisher is not None:
                    publisher.publish(reading)
                if writer is not None:
                    writer.writerow(reading.to_csv_row())
                    stats.rows += 1
    except KeyboardInterrupt:
        stats.interrupted = True
    except BrokenPipeError:
        # Reader of --csv - went away (e.g. `| head`): stop quietly like other CLI tools.
        stats.interrupted = True
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as exc:
        print(f"edge-sim: error: cannot write CSV: {exc}", file=sys.stderr)
        return 1
    finally:
        if publisher is not None:
            with contextlib.suppress(KeyboardInterrupt):
                publisher.close(flush_timeout=args.flush_timeout)
            stats.published, stats.acknowledged = publisher.published, publisher.acknowledged
    print(stats.summary(publishing, args.csv, args.qos), file=summary_out, flush=True)
    if publishing:
        confirmed = stats.acknowledged if args.qos > 0 else stats.published
        if confirmed < stats.generated:
            what = "acknowledged by the broker" if args.qos > 0 else "handed to the network"
            print(f"edge-sim: error: {stats.generated - confirmed} of {stats.generated} readings were not {what} "
                  f"(published {stats.published}, acknowledged {stats.acknowledged}; gave up after "
                  f"{args.flush_timeout:g} s without an acknowledgement)", file=sys.stderr, flush=True)
            return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return int(exc.code or 0)
    if args.no_publish and args.csv is None:
        parser.print_usage(sys.stderr)
        print("edge-sim: error: --no-publish needs --csv (nothing to do otherwise)", file=sys.stderr)
        return 2
    if args.no_publish and args.count is None and args.duration is None:
        parser.print_usage(sys.stderr)
        print("edge-sim: error: --no-publish runs as fast as possible: give --count or --duration",
              file=sys.stderr)
        return 2
    if args.duration is not None and not (args.duration >= 0 and math.isfinite(args.duration)):
        parser.print_usage(sys.stderr)
        print("edge-sim: error: --duration must be a non-negative number", file=sys.stderr)
        return 2
    stop = threading.Event()
    with _stop_on_sigterm(stop):
        return run(args, stop)


if __name__ == "__main__":
    sys.exit(main())
