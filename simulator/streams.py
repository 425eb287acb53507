"""Pure, seeded generators of realistic sensor streams with labelled, injected anomalies (no I/O)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count as counter
from types import MappingProxyType
from typing import Any

import numpy as np

ANOMALY_KINDS: tuple[str, ...] = ("spike", "level_shift", "drift", "stuck", "noise_burst")
SENSOR_KINDS: tuple[str, ...] = ("temperature", "humidity", "vibration", "current")
CSV_HEADER: tuple[str, ...] = (
    "timestamp", "sensor_id", "kind", "value", "anomaly", "anomaly_kind", "anomaly_id",
)
# On average one anomaly per sensor every 600 readings (~10 min at 1 reading/s).
DEFAULT_ANOMALY_RATE: float = 1.0 / 600.0
# Normal readings a sensor shows after an anomaly before the next one may start, so
# that stretches stay separable for an evaluator (detectors lag a little).
DEFAULT_ANOMALY_GAP: int = 30

VALUE_DECIMALS = 4
TS_DECIMALS = 6
_DAY = 86400.0
# The daily cycle peaks mid-afternoon (UTC), like an indoor temperature does.
_DAILY_PEAK_S = 15 * 3600.0


@dataclass(frozen=True, slots=True)
class SensorProfile:
    """How one kind of sensor behaves when healthy; units are the kind's own."""

    kind: str
    unit: str
    base: float
    daily_amplitude: float  # negative: moves against the temperature cycle
    load_amplitude: float
    offset_spread: float  # per-sensor baseline offset drawn from +/- this
    wander_std: float  # stationary std of the AR(1) component
    wander_tau_s: float  # its correlation time, so the process is rate-independent
    white_std: float  # measurement noise on top
    lower: float | None
    upper: float | None
    normal_range: tuple[float, float]  # where healthy readings are expected to stay


PROFILES: Mapping[str, SensorProfile] = MappingProxyType({
    "temperature": SensorProfile(
        kind="temperature", unit="°C", base=22.0, daily_amplitude=2.5, load_amplitude=0.0,
        offset_spread=1.0, wander_std=0.15, wander_tau_s=120.0, white_std=0.03,
        lower=None, upper=None, normal_range=(17.0, 27.0)),
    "humidity": SensorProfile(
        kind="humidity", unit="%RH", base=50.0, daily_amplitude=-6.0, load_amplitude=0.0,
        offset_spread=3.0, wander_std=0.6, wander_tau_s=90.0, white_std=0.2,
        lower=0.0, upper=100.0, normal_range=(36.0, 64.0)),
    "vibration": SensorProfile(
        kind="vibration", unit="g", base=0.8, daily_amplitude=0.0, load_amplitude=0.15,
        offset_spread=0.05, wander_std=0.025, wander_tau_s=5.0, white_std=0.01,
        lower=0.0, upper=None, normal_range=(0.45, 1.15)),
    "current": SensorProfile(
        kind="current", unit="A", base=4.5, daily_amplitude=0.0, load_amplitude=1.0,
        offset_spread=0.25, wander_std=0.08, wander_tau_s=10.0, white_std=0.03,
        lower=0.0, upper=None, normal_range=(2.7, 6.3)),
})

# Lengths (readings, inclusive) and magnitudes (in units of the sensor's noise sigma,
# inclusive) of each anomaly kind. For noise_burst the magnitude is the noise factor.
ANOMALY_LENGTHS: Mapping[str, tuple[int, int]] = MappingProxyType({
    "spike": (1, 3), "level_shift": (30, 120), "drift": (60, 300),
    "stuck": (30, 120), "noise_burst": (20, 60),
})
ANOMALY_MAGNITUDES: Mapping[str, tuple[float, float]] = MappingProxyType({
    "spike": (6.0, 12.0), "level_shift": (4.0, 8.0), "drift": (5.0, 10.0),
    "stuck": (0.0, 0.0), "noise_burst": (5.0, 10.0),
})


@dataclass(frozen=True, slots=True)
class SimReading:
    """One simulated reading with its ground-truth labels."""

    ts: float
    sensor_id: str
    kind: str
    value: float
    anomaly: int
    anomaly_kind: str
    anomaly_id: int

    def to_payload(self) -> dict[str, Any]:
        """The MQTT payload: value and timestamp only, labels stay private."""
        return {"value": self.value, "ts": self.ts}

    def to_csv_row(self) -> list[str]:
        """The reading as CSV fields, in CSV_HEADER order (repr keeps floats exact)."""
        return [repr(self.ts), self.sensor_id, self.kind, repr(self.value),
                str(self.anomaly), self.anomaly_kind, str(self.anomaly_id)]


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """One simulated sensor's identity and its seeded individual traits."""

    index: int
    sensor_id: str
    kind: str
    offset: float
    daily_shift_s: float
    load_period_s: float
    load_phase: float
    load_harmonic_phase: float
    noise_scale: float

    @property
    def profile(self) -> SensorProfile:
        return PROFILES[self.kind]

    @property
    def sigma(self) -> float:
        """Std of this sensor's healthy noise: the unit anomaly magnitudes are expressed in."""
        p = self.profile
        return self.noise_scale * math.hypot(p.wander_std, p.white_std)


@dataclass(slots=True)
class _ActiveAnomaly:
    kind: str
    anomaly_id: int
    length: int
    magnitude: float  # signed offset in value units; noise factor for noise_burst
    frozen: float  # the value a stuck sensor repeats
    step: int = 0


def _seed_sequence(seed: int, sensor_index: int) -> np.random.SeedSequence:
    # Keyed by sensor index so a sensor's stream does not depend on how many sensors run.
    return np.random.SeedSequence(entropy=seed, spawn_key=(sensor_index,))


def _make_spec(seed: int, index: int, kind: str) -> SensorSpec:
    p = PROFILES[kind]
    rng = np.random.default_rng(_seed_sequence(seed, index).spawn(1)[0])
    return SensorSpec(
        index=index,
        sensor_id=f"{kind}-{index + 1}",
        kind=kind,
        offset=float(rng.uniform(-p.offset_spread, p.offset_spread)),
        daily_shift_s=float(rng.uniform(-3600.0, 3600.0)),
        load_period_s=float(rng.uniform(900.0, 3600.0)),
        load_phase=float(rng.uniform(0.0, 2 * math.pi)),
        load_harmonic_phase=float(rng.uniform(0.0, 2 * math.pi)),
        noise_scale=float(rng.uniform(0.8, 1.25)),
    )


class _SensorStream:
    """Mutable per-run state of one sensor: its AR(1) noise and any anomaly in progress."""

    _BLOCK = 256  # random draws are taken in blocks for speed; the sequence stays seeded

    def __init__(self, spec: SensorSpec, seed: int, rate: float, hazard: float,
                 anomaly_kinds: Sequence[str], gap: int, warmup: int) -> None:
        self.spec = spec
        p = spec.profile
        _, noise_ss, schedule_ss, shape_ss = _seed_sequence(seed, spec.index).spawn(4)
        # Separate generators: the healthy signal is identical whatever the anomalies do,
        # which lets tests (and evaluators) compare against an anomaly-free run.
        self._noise_rng = np.random.default_rng(noise_ss)
        self._schedule_rng = np.random.default_rng(schedule_ss)
        self._shape_rng = np.random.default_rng(shape_ss)
        self._noise: list[list[float]] = []
        self._uniforms: list[float] = []
        self._phi = math.exp(-1.0 / (rate * p.wander_tau_s))
        self._innovation_std = spec.noise_scale * p.wander_std * math.sqrt(1.0 - self._phi ** 2)
        self._white_std = spec.noise_scale * p.white_std
        self._wander = 0.0
        self._started = False
        self._hazard = hazard
        self._anomaly_kinds = tuple(anomaly_kinds)
        self._gap = gap
        self._quiet = 0  # readings left before another anomaly may start
        self._earliest_start = max(1, warmup)  # a stuck sensor needs a previous value
        self._active: _ActiveAnomaly | None = None
        self._last_value = 0.0

    def baseline(self, ts: float) -> float:
        """The deterministic part: level, daily cycle and load cycle."""
        s, p = self.spec, self.spec.profile
        daily = math.cos(2 * math.pi * ((ts % _DAY) - _DAILY_PEAK_S - s.daily_shift_s) / _DAY)
        theta = 2 * math.pi * ts / s.load_period_s + s.load_phase
        # A harmonic makes the load cycle less perfectly sinusoidal; 1.35 keeps it in [-1, 1].
        load = (math.sin(theta) + 0.35 * math.sin(2 * theta + s.load_harmonic_phase)) / 1.35
        return p.base + s.offset + p.daily_amplitude * daily + p.load_amplitude * load

    def _next_noise(self) -> list[float]:
        if not self._noise:
            block = self._noise_rng.standard_normal((self._BLOCK, 3)).tolist()
            block.reverse()
            self._noise = block
        return self._noise.pop()

    def _next_uniform(self) -> float:
        if not self._uniforms:
            block = self._schedule_rng.random(self._BLOCK).tolist()
            block.reverse()
            self._uniforms = block
        return self._uniforms.pop()

    def _clip(self, value: float) -> float:
        p = self.spec.profile
        if p.lower is not None and value < p.lower:
            return p.lower
        if p.upper is not None and value > p.upper:
            return p.upper
        return value

    def _start_anomaly(self, ids: Iterator[int]) -> None:
        rng = self._shape_rng
        kind = self._anomaly_kinds[int(rng.integers(len(self._anomaly_kinds)))]
        lo_len, hi_len = ANOMALY_LENGTHS[kind]
        lo_mag, hi_mag = ANOMALY_MAGNITUDES[kind]
        length = int(rng.integers(lo_len, hi_len + 1))
        size = float(rng.uniform(lo_mag, hi_mag))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        magnitude = size if kind == "noise_burst" else sign * size * self.spec.sigma
        self._active = _ActiveAnomaly(kind, next(ids), length, magnitude, self._last_value)

    def step(self, tick: int, ts: float, ids: Iterator[int]) -> SimReading:
        """Advance one reading: update the noise, maybe start an anomaly, apply it."""
        z_wander, z_white, z_burst = self._next_noise()
        if self._started:
            self._wander = self._phi * self._wander + self._innovation_std * z_wander
        else:
            # Start from the stationary distribution rather than from zero.
            self._wander = self.spec.noise_scale * self.spec.profile.wander_std * z_wander
            self._started = True
        clean = self.baseline(ts) + self._wander + self._white_std * z_white

        # The schedule draw happens every tick so the schedule never depends on shapes.
        u = self._next_uniform()
        if self._active is None:
            if self._quiet > 0:
                self._quiet -= 1
            elif tick >= self._earliest_start and u < self._hazard:
                self._start_anomaly(ids)

        a = self._active
        if a is None:
            value, kind, anomaly_id = clean, "", 0
        else:
            value = self._apply(a, clean, z_burst)
            kind, anomaly_id = a.kind, a.anomaly_id
            a.step += 1
            if a.step >= a.length:
                self._active = None
                self._quiet = self._gap
        value = round(self._clip(value), VALUE_DECIMALS)
        self._last_value = value
        return SimReading(ts, self.spec.sensor_id, self.spec.kind, value,
                          1 if anomaly_id else 0, kind, anomaly_id)

    def _apply(self, a: _ActiveAnomaly, clean: float, z_burst: float) -> float:
        if a.kind in ("spike", "level_shift"):
            return clean + a.magnitude
        if a.kind == "drift":
            return clean + a.magnitude * (a.step + 1) / a.length
        if a.kind == "stuck":
            return a.frozen
        # noise_burst: extra noise so the total std is about magnitude x sigma.
        extra = self.spec.sigma * math.sqrt(a.magnitude ** 2 - 1.0)
        return clean + extra * z_burst


def _mean_busy(anomaly_kinds: Sequence[str], gap: int) -> float:
    """Expected readings an anomaly occupies, including the quiet gap after it."""
    if not anomaly_kinds:
        return 0.0
    lengths = [sum(ANOMALY_LENGTHS[k]) / 2.0 for k in anomaly_kinds]
    return sum(lengths) / len(lengths) + gap


@dataclass
class Simulation:
    """A reproducible multi-sensor stream: same arguments -> same readings.

    ``anomaly_rate`` is the average number of anomalies per reading of each sensor
    (default 1/600: one every ~10 minutes at 1 reading/s). Sensor ``i`` is of kind
    ``kinds[i % len(kinds)]`` and named ``f"{kind}-{i+1}"``. ``start`` is the first
    timestamp (epoch seconds; the current time when ``None``); each sensor reads
    ``rate`` times per simulated second. No anomaly starts in a sensor's first
    ``warmup`` readings.
    """

    n_sensors: int
    rate: float = 1.0
    seed: int = 0
    anomaly_rate: float = DEFAULT_ANOMALY_RATE
    start: float | None = None
    kinds: Sequence[str] = SENSOR_KINDS
    anomaly_kinds: Sequence[str] = ANOMALY_KINDS
    warmup: int = 0
    anomaly_gap: int = DEFAULT_ANOMALY_GAP
    sensors: tuple[SensorSpec, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.n_sensors < 1:
            raise ValueError("n_sensors must be at least 1")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError("rate must be a positive number of readings per second")
        if not 0.0 <= self.anomaly_rate <= 1.0:
            raise ValueError("anomaly_rate must be within [0, 1] (anomalies per reading)")
        if self.warmup < 0 or self.anomaly_gap < 0:
            raise ValueError("warmup and anomaly_gap must not be negative")
        if not self.kinds:
            raise ValueError("at least one sensor kind is needed")
        unknown = [k for k in self.kinds if k not in PROFILES]
        unknown += [k for k in self.anomaly_kinds if k not in ANOMALY_LENGTHS]
        if unknown:
            raise ValueError(f"unknown kind(s): {', '.join(unknown)}")
        if self.start is None:
            self.start = time.time()
        self.kinds = tuple(self.kinds)
        self.anomaly_kinds = tuple(self.anomaly_kinds)
        self.sensors = tuple(
            _make_spec(self.seed, i, self.kinds[i % len(self.kinds)])
            for i in range(self.n_sensors)
        )

    @property
    def start_ts(self) -> float:
        assert self.start is not None  # resolved in __post_init__
        return self.start

    @property
    def hazard(self) -> float:
        """Per-reading chance that an idle sensor starts an anomaly.

        Chosen so that, counting the time anomalies and gaps occupy, the long-run
        average is ``anomaly_rate`` anomalies per reading.
        """
        if self.anomaly_rate <= 0.0 or not self.anomaly_kinds:
            return 0.0
        idle = 1.0 / self.anomaly_rate - _mean_busy(self.anomaly_kinds, self.anomaly_gap)
        return 1.0 if idle <= 1.0 else 1.0 / idle

    def timestamp(self, tick: int) -> float:
        """Timestamp of the ``tick``-th reading of every sensor (rounded to microseconds)."""
        return round(self.start_ts + tick / self.rate, TS_DECIMALS)

    def ticks_for(self, duration: float) -> int:
        """How many readings per sensor fit in ``duration`` simulated seconds."""
        return max(0, math.ceil(duration * self.rate - 1e-9))

    def iter_readings(self, count: int | None = None,
                      duration: float | None = None) -> Iterator[SimReading]:
        """Readings in time order across sensors, from a fresh start on every call.

        Stops after ``count`` readings in total, or once ``duration`` simulated seconds
        have passed for every sensor; runs forever when both are ``None``.
        """
        if count is not None and count < 0:
            raise ValueError("count must not be negative")
        if duration is not None and duration < 0:
            raise ValueError("duration must not be negative")
        ids = counter(1)
        streams = [
            _SensorStream(spec, self.seed, self.rate, self.hazard, self.anomaly_kinds, gap=self.anomaly_gap, warmup=self.warmup)
            for spec in self.sensors
        ]
        max_ticks = None if duration is None else self.ticks_for(duration)
        emitted = 0
        tick = 0
        while max_ticks is None or tick < max_ticks:
            ts = self.timestamp(tick)
            for stream in streams:
                if count is not None and emitted >= count:
                    return
                yield stream.step(tick, ts, ids)
                emitted += 1
            tick += 1
