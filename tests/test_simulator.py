"""Tests for the sensor simulator: stream realism, anomaly labels, CSV and MQTT output."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.kit import Collector, Endpoint, start_test_broker
from simulator.cli import main
from simulator.streams import (
    ANOMALY_KINDS,
    ANOMALY_LENGTHS,
    CSV_HEADER,
    PROFILES,
    SimReading,
    Simulation,
)

MOSQUITTO = "/usr/sbin/mosquitto"
START = 1_764_241_200.0  # 2025-11-27 10:00:00 UTC


def _csv_bytes(readings: Iterator[SimReading]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(r.to_csv_row() for r in readings)
    return buf.getvalue().encode()


def _by_sensor(readings: list[SimReading]) -> dict[str, list[SimReading]]:
    out: dict[str, list[SimReading]] = defaultdict(list)
    for r in readings:
        out[r.sensor_id].append(r)
    return out


def _stretches(series: list[SimReading]) -> dict[int, list[int]]:
    """anomaly_id -> indices (into one sensor's series) carrying that id."""
    out: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(series):
        if r.anomaly_id:
            out[r.anomaly_id].append(i)
    return out


# A long stream with frequent anomalies and the same stream without any: the healthy
# signal is drawn from its own generator, so the two differ exactly where anomalies are.
LONG: dict[str, Any] = dict(n_sensors=4, rate=1.0, seed=11, start=START)
LONG_COUNT = 4 * 6000


@pytest.fixture(scope="module")
def noisy() -> list[SimReading]:
    return list(Simulation(**LONG, anomaly_rate=1 / 150).iter_readings(count=LONG_COUNT))


@pytest.fixture(scope="module")
def clean() -> list[SimReading]:
    return list(Simulation(**LONG, anomaly_rate=0.0).iter_readings(count=LONG_COUNT))


# --- the pure core ---------------------------------------------------------------


def test_same_seed_gives_byte_identical_csv_and_other_seed_differs() -> None:
    def make(seed: int) -> bytes:
        return _csv_bytes(Simulation(5, rate=2.0, seed=seed, start=START,
                                     anomaly_rate=1 / 50).iter_readings(count=3000))

    first, again, other = make(3), make(3), make(4)
    assert first == again
    assert first != other
    assert b",1," in first  # anomalies were part of what got reproduced


def test_shorter_run_is_a_prefix_of_longer_run() -> None:
    sim = Simulation(3, rate=5.0, seed=9, start=START, anomaly_rate=1 / 40)
    short = list(sim.iter_readings(count=400))
    long = list(sim.iter_readings(count=1000))
    assert long[:400] == short


def test_sensor_ids_kinds_and_timestamps() -> None:
    sim = Simulation(6, rate=4.0, seed=1, start=START)
    readings = list(sim.iter_readings(duration=2.0))
    assert len(readings) == 6 * 8
    ids = [r.sensor_id for r in readings[:6]]
    assert ids == ["temperature-1", "humidity-2", "vibration-3", "current-4",
                   "temperature-5", "humidity-6"]
    assert all(r.kind == r.sensor_id.rsplit("-", 1)[0] for r in readings)
    for tick in range(8):
        assert {r.ts for r in readings[tick * 6:(tick + 1) * 6]} == {START + tick * 0.25}
    # Sensors of the same kind are not copies of each other.
    assert readings[0].value != readings[4].value


def test_count_is_total_readings_across_sensors() -> None:
    readings = list(Simulation(4, seed=2, start=START).iter_readings(count=10))
    assert len(readings) == 10
    assert [r.sensor_id for r in readings[8:]] == ["temperature-1", "humidity-2"]


def test_healthy_readings_stay_in_plausible_ranges(clean: list[SimReading]) -> None:
    day = list(Simulation(8, rate=1 / 60, seed=5, start=START, anomaly_rate=0.0)
               .iter_readings(duration=86400))
    for r in clean + day:
        lo, hi = PROFILES[r.kind].normal_range
        assert lo <= r.value <= hi, r
        assert r.anomaly == 0
    vib = [r.value for r in clean + day if r.kind == "vibration"]
    assert min(vib) < 0.95 < max(vib)  # 0.95 g is an ordinary vibration level


def test_daily_cycle_moves_temperature_and_humidity_the_opposite_way() -> None:
    day = _by_sensor(list(Simulation(2, rate=1 / 60, seed=8, start=START, anomaly_rate=0.0)
                          .iter_readings(duration=86400)))
    temp = np.array([r.value for r in day["temperature-1"]])
    hum = np.array([r.value for r in day["humidity-2"]])
    assert temp.max() - temp.min() > 3.5  # a real daily swing, not flat noise
    assert np.corrcoef(temp, hum)[0, 1] < -0.8


def test_noise_is_autocorrelated_like_a_real_sensor(clean: list[SimReading]) -> None:
    # Over a short window the daily/load cycles are nearly linear; remove that trend and
    # the remaining noise must still be correlated from one reading to the next.
    for sid in ("temperature-1", "humidity-2", "vibration-3", "current-4"):
        v = np.array([r.value for r in _by_sensor(clean)[sid][:200]])
        t = np.arange(v.size)
        resid = v - np.polyval(np.polyfit(t, v, 2), t)
        assert np.corrcoef(resid[:-1], resid[1:])[0, 1] > 0.5, sid


def test_labels_line_up_with_injected_stretches(noisy: list[SimReading],
                                               clean: list[SimReading]) -> None:
    assert [(r.ts, r.sensor_id) for r in noisy] == [(r.ts, r.sensor_id) for r in clean]
    for n, c in zip(noisy, clean, strict=True):
        if n.anomaly:
            assert n.anomaly_kind in ANOMALY_KINDS and n.anomaly_id > 0
            # every labelled reading is altered (a stuck value may meet the real one by chance)
            assert n.value != c.value or n.anomaly_kind == "stuck", n
        else:
            assert (n.anomaly_kind, n.anomaly_id) == ("", 0)
            assert n.value == c.value, n  # and nothing unlabelled is
    seen: list[int] = []
    for series in _by_sensor(noisy).values():
        for aid, idx in _stretches(series).items():
            assert idx == list(range(idx[0], idx[-1] + 1)), "an anomaly is one contiguous stretch"
            kinds = {series[i].anomaly_kind for i in idx}
            assert len(kinds) == 1
            lo, hi = ANOMALY_LENGTHS[kinds.pop()]
            cut_off = idx[-1] == len(series) - 1  # the stream may end mid-anomaly
            assert (1 if cut_off else lo) <= len(idx) <= hi
            seen.append(aid)
    # ids count injections: 1..N, each on exactly one sensor, numbered in time order
    assert sorted(seen) == list(range(1, len(seen) + 1))
    first_seen = list(dict.fromkeys(r.anomaly_id for r in noisy if r.anomaly_id))
    assert first_seen == sorted(first_seen)


def test_anomaly_rate_sets_how_often_anomalies_happen() -> None:
    for rate in (1 / 600, 1 / 200):
        readings = Simulation(8, seed=4, start=START, anomaly_rate=rate).iter_readings(count=8 * 20000)
        n = len({r.anomaly_id for r in readings if r.anomaly_id})
        expected = 8 * 20000 * rate
        assert 0.75 * expected < n < 1.25 * expected
    quiet = Simulation(4, seed=4, start=START, anomaly_rate=0.0).iter_readings(count=20000)
    assert not any(r.anomaly for r in quiet)


def test_warmup_keeps_the_start_clean() -> None:
    sim = Simulation(2, seed=6, start=START, anomaly_rate=1 / 40, warmup=500)
    readings = list(sim.iter_readings(count=2 * 1500))
    assert not any(r.anomaly for r in readings[:2 * 500])
    assert any(r.anomaly for r in readings[2 * 500:])


def test_every_anomaly_kind_appears_with_its_shape(noisy: list[SimReading],
                                                    clean: list[SimReading]) -> None:
    sim = Simulation(**LONG)
    sigma = {s.sensor_id: s.sigma for s in sim.sensors}
    noisy_by, clean_by = _by_sensor(noisy), _by_sensor(clean)
    checked: dict[str, int] = defaultdict(int)
    for sid, series in noisy_by.items():
        v = np.array([r.value for r in series])
        dev = v - np.array([r.value for r in clean_by[sid]])
        s = sigma[sid]
        for idx in _stretches(series).values():
            kind = series[idx[0]].anomaly_kind
            a, b = idx[0], idx[-1] + 1
            before = v[max(0, a - 30):a]
            if kind == "spike":
                # a big jump away from the previous (normal) reading
                assert abs(v[a] - v[a - 1]) > 4 * s
                assert np.all(np.abs(dev[a:b]) >= 6 * s - 1e-3)
            elif kind == "level_shift":
                shift = dev[a:b]
                assert np.ptp(shift) < 1e-3  # a constant step
                assert abs(shift[0]) >= 4 * s - 1e-3
                assert abs(v[a:b].mean() - before.mean()) > 2 * s
            elif kind == "drift":
                ramp = dev[a:b]
                slope = np.polyfit(np.arange(b - a), ramp, 1)[0]
                assert abs(slope) * (b - a) >= 4.5 * s  # a clear trend over the stretch
                assert np.all(np.diff(np.abs(ramp)) >= -1e-3)  # growing, never receding
            elif kind == "stuck":
                assert np.ptp(v[a:b]) == 0.0  # zero variance
                assert v[a] == v[a - 1]  # frozen at the last value
                assert np.ptp([r.value for r in clean_by[sid][a:b]]) > 0  # the real signal moved on
            elif kind == "noise_burst":
                base_std = np.std(np.diff(before))
                assert np.std(np.diff(v[a:b])) > 4 * base_std
                assert np.std(dev[a:b]) > 2.5 * s
            checked[kind] += 1
    assert set(checked) == set(ANOMALY_KINDS)
    assert all(n >= 3 for n in checked.values()), checked


def test_anomalies_are_abnormal_but_not_absurd(noisy: list[SimReading]) -> None:
    for r in noisy:
        lo, hi = PROFILES[r.kind].normal_range
        span = hi - lo
        assert lo - span <= r.value <= hi + span, r
        if r.kind == "humidity":
            assert 0.0 <= r.value <= 100.0
        if r.kind in ("vibration", "current"):
            assert r.value >= 0.0


def test_payload_has_no_labels() -> None:
    r = next(iter(Simulation(1, seed=0, start=START).iter_readings(count=1)))
    assert r.to_payload() == {"value": r.value, "ts": START}
    assert r.value == round(r.value, 4)


def test_invalid_simulation_arguments_are_rejected() -> None:
    for bad in (dict(n_sensors=0), dict(n_sensors=1, rate=0.0), dict(n_sensors=1, anomaly_rate=2.0),
                dict(n_sensors=1, kinds=("pressure",)), dict(n_sensors=1, anomaly_kinds=("bogus",))):
        with pytest.raises(ValueError):
            Simulation(**bad)


# --- the CLI without a broker ------------------------------------------------------


def test_cli_csv_no_publish_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out1, out2 = tmp_path / "a.csv", tmp_path / "b.csv"
    args = ["--sensors", "3", "--rate", "2", "--seed", "7", "--count", "3000", "--no-publish",
            "--anomaly-rate", "0.01", "--start", str(START)]
    assert main(args + ["--csv", str(out1)]) == 0
    summary = capsys.readouterr().out
    assert main(args + ["--csv", str(out2)]) == 0
    assert out1.read_bytes() == out2.read_bytes()

    with out1.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == CSV_HEADER
    assert len(rows) == 1 + 3000
    expected = [r.to_csv_row() for r in Simulation(3, rate=2.0, seed=7, anomaly_rate=0.01,
                                                   start=START).iter_readings(count=3000)]
    assert rows[1:] == expected
    assert [float(r[0]) for r in rows[1:4]] == [START] * 3
    assert float(rows[4][0]) == START + 0.5
    injected = len({r[6] for r in rows[1:] if r[4] == "1"})
    assert injected > 0
    assert f"{injected} anomalies injected" in summary and "3000 CSV rows" in summary


def test_cli_duration_and_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sensors", "2", "--rate", "4", "--duration", "5", "--no-publish",
                 "--csv", "-", "--start", str(START), "--kinds", "current"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == ",".join(CSV_HEADER)
    assert len(lines) == 1 + 2 * 20
    assert {line.split(",")[1] for line in lines[1:]} == {"current-1", "current-2"}
    assert "edge-sim:" in captured.err  # the summary stays out of the CSV


@pytest.mark.parametrize("argv", [
    ["--no-publish", "--count", "5"],                       # nothing to do
    ["--no-publish", "--csv", "-"],                         # unbounded as-fast-as-possible
    ["--count", "5", "--duration", "3"],                    # mutually exclusive
    ["--rate", "0", "--count", "5", "--no-publish", "--csv", "-"],
    ["--anomaly-kinds", "spike,meteor", "--count", "5", "--no-publish", "--csv", "-"],
])
def test_cli_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_unreachable_broker_exits_1_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()  # nothing listens there
    assert main(["--host", "127.0.0.1", "--port", str(port), "--count", "3",
                 "--connect-timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "Traceback" not in err


# --- against a real broker ---------------------------------------------------------


@pytest.fixture
def mosquitto_port(tmp_path: Path) -> Iterator[int]:
    """A private mosquitto on a free loopback port, stopped after the test."""
    if not os.path.exists(MOSQUITTO):
        pytest.fail(f"{MOSQUITTO} is needed for broker tests")
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5.0
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mosquitto did not start")
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def _subscriber(port: int, topic: str) -> Collector:
    """The kit's collector on the module's broker, under one prefix."""
    return Collector(Endpoint("127.0.0.1", port), [topic])


def _readings(sub: Collector, n: int, timeout: float = 5.0) -> list[tuple[str, dict[str, object], int]]:
    """(topic, payload, qos) of the first ``n`` messages (TimeoutError if fewer come)."""
    return [(m.topic, m.json(), m.qos) for m in sub.wait_for(lambda ms: len(ms) >= n, timeout)]


@pytest.mark.broker
def test_cli_publishes_paced_readings_to_broker(mosquitto_port: int, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    sub = _subscriber(mosquitto_port, "plant/#")
    out = tmp_path / "pub.csv"
    try:
        began = time.monotonic()
        rc = main(["--host", "127.0.0.1", "--port", str(mosquitto_port), "--sensors", "3",
                   "--rate", "20", "--seed", "2", "--count", "15", "--topic-prefix", "plant",
                   "--start", str(START), "--csv", str(out), "--anomaly-rate", "0.2"])
        elapsed = time.monotonic() - began
        messages = _readings(sub, 15)
    finally:
        sub.close()
    assert rc == 0
    assert elapsed >= 4 / 20 - 0.02  # 5 ticks at 20 readings/s per sensor are paced
    assert "published 15 readings, 15 acknowledged" in capsys.readouterr().out

    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(messages) == len(rows) == 15
    for (topic, payload, qos), row in zip(messages, rows, strict=True):
        assert topic == f"plant/{row['sensor_id']}"
        assert qos == 1
        assert set(payload) == {"value", "ts"}  # labels never leak into the payload
        assert payload["value"] == float(row["value"])
        assert payload["ts"] == float(row["timestamp"])
        assert isinstance(payload["ts"], float)


@pytest.mark.broker
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_stops_cleanly_on_signal(mosquitto_port: int, sig: signal.Signals) -> None:
    prefix = f"signal-{sig.name}"  # its own topics: the broker is shared by this module's tests
    sub = _subscriber(mosquitto_port, f"{prefix}/#")
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "--host", "127.0.0.1", "--port",
         str(mosquitto_port), "--sensors", "2", "--rate", "20", "--topic-prefix", prefix],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert len(_readings(sub, 4, timeout=10)) >= 4, "simulator never published"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "published" in out and "stopped early" in out
    published = int(out.split("published ")[1].split()[0])
    assert published >= 4


@pytest.mark.broker
def test_cli_reports_readings_the_broker_never_acknowledged_and_exits_3() -> None:

    broker = start_test_broker()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "simulator.cli", "--host", broker.host, "--port", str(broker.port), "--sensors", "2",
             "--rate", "100", "--count", "600", "--flush-timeout", "1", "--topic-prefix", "gone"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sub = _subscriber(broker.port, "gone/#")
        try:  # the simulator is publishing (its start takes seconds on a loaded machine)
            assert _readings(sub, 5, timeout=30), "simulator never published"
        finally:
            sub.close()
        broker.stop()  # the broker goes away with readings still to come
        out, err = proc.communicate(timeout=30)
    finally:
        broker.close()
    assert proc.returncode == 3, (out, err)
    match = re.search(r"error: (\d+) of 600 readings were not acknowledged by the broker", err)
    assert match and 0 < int(match.group(1)) < 600, err


@pytest.mark.broker
def test_cli_seq_numbers_each_sensors_readings(mosquitto_port: int) -> None:
    sub = _subscriber(mosquitto_port, "seq/#")
    try:
        assert main(["--host", "127.0.0.1", "--port", str(mosquitto_port), "--sensors", "2", "--rate", "50",
                     "--count", "6", "--topic-prefix", "seq", "--seq"]) == 0
        messages = _readings(sub, 6)
    finally:
        sub.close()
    by_sensor: dict[str, list[object]] = {}
    for topic, payload, _ in messages:
        by_sensor.setdefault(topic, []).append(payload["seq"])
    assert sorted(by_sensor.values()) == [[1, 2, 3], [1, 2, 3]]
