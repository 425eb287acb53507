"""Fitting a sensor model with scikit-learn and exporting it for the numpy-only runtime."""

from __future__ import annotations

import fnmatch
import platform
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from edge_agent.core.adaptation import LearnRequest
from edge_agent.core.features import DEFAULT_TRANSFORMS, FeatureSpec, feature_matrix, parse_transform
from edge_agent.core.forest import Forest
from edge_agent.core.model import SensorModel, build_model
from edge_agent.tools.table import SensorTable, groups

# A field whose consecutive training readings correlate more than this wanders
# (temperatures warming up, slow process values): its level is not expected to stay
# inside the training range: it gets a much wider margin (model.WANDERING_MARGIN).
WANDERING_AUTOCORRELATION = 0.8
# Unlabelled training rows (a sensor learning on the device) that a first forest
# scores this many median absolute deviations over the median are left out of the
# model: a spike or a stuck stretch in the readings a sensor learns from must not
# become part of its normal (see bench/eval_simulator.py --learn).
OUTLIER_MADS = 8.0
DEFAULT_TREES = 100
DEFAULT_MAX_SAMPLES = 256


class TrainingError(ValueError):
    """Training data that cannot give a model (too few rows, nothing selected)."""


# Fits a forest on a feature matrix (rows without NaN): (forest, estimator or None).
Fitter = Callable[[np.ndarray, int, int, int], tuple[Forest, Any]]


def sklearn_fitter(x: np.ndarray, trees: int, max_samples: int, seed: int) -> tuple[Forest, Any]:
    """scikit-learn's IsolationForest, kept as the estimator too (``edge-agent train``)."""
    from sklearn.ensemble import IsolationForest  # training only: the runtime never imports it

    estimator = IsolationForest(n_estimators=trees, max_samples=min(max_samples, len(x)), random_state=seed).fit(x)
    return Forest.from_sklearn(estimator), estimator


def numpy_fitter(x: np.ndarray, trees: int, max_samples: int, seed: int) -> tuple[Forest, Any]:
    """The numpy fitter of models learned on the device (no scikit-learn at run time)."""
    from edge_agent.core.forest_fit import fit_forest

    return fit_forest(x, trees, max_samples, seed), None


def training_features(
    spec: FeatureSpec, values: np.ndarray, group_rows: Mapping[str, np.ndarray], keep: np.ndarray,
    progress: Callable[[int], None] | None = None, times: np.ndarray | None = None,
) -> np.ndarray:
    """Features of every group as streamed, keeping the rows ``keep`` marks (normal ones)."""
    parts = []
    done = 0
    for rows in group_rows.values():
        feats = feature_matrix(spec, values[rows], None if times is None else times[rows])
        parts.append(feats[keep[rows]])
        done += len(rows)
        if progress is not None:
            progress(done)
    return np.vstack(parts) if parts else np.empty((0, len(spec.names)))


def train_model(
    table: SensorTable,
    name: str,
    version: str | None = None,
    transforms: Sequence[str] = DEFAULT_TRANSFORMS,
    sensor_pattern: str | None = None,
    trees: int = DEFAULT_TREES,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    seed: int = 0,
    command: str = "",
    progress: Callable[[int], None] | None = None,
) -> tuple[SensorModel, Any]:
    """Train with scikit-learn on the normal rows of a table (labelled anomalies are left out)."""
    group_rows = groups(table)
    if sensor_pattern is not None:
        group_rows = {s: r for s, r in group_rows.items() if fnmatch.fnmatchcase(s, sensor_pattern)}
        if not group_rows:
            raise TrainingError(f"{table.path}: no sensor_id matches {sensor_pattern!r}")
    keep = np.ones(len(table), dtype=bool) if table.labels is None else table.labels == 0
    spec = FeatureSpec(fields=tuple(table.fields), transforms=tuple(transforms))
    record = training_record(table.path, sorted(s for s in group_rows if s), sklearn_fitter, trees, max_samples, seed, command)
    try:
        times = np.array([np.nan if t is None else t for t in table.timestamps], dtype=np.float64)
        return fit_model(
            spec, table.values, group_rows, keep, name, version, sklearn_fitter, record, trees, max_samples, seed, progress,
            times=times,
        )
    except TrainingError as e:
        raise TrainingError(f"{table.path}: {e}") from None


def fit_model(
    spec: FeatureSpec,
    values: np.ndarray,
    group_rows: Mapping[str, np.ndarray],
    keep: np.ndarray,
    name: str,
    version: str | None,
    fitter: Fitter,
    record: Mapping[str, Any],
    trees: int = DEFAULT_TREES,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    leave_out_outliers: bool = False,
    times: np.ndarray | None = None,
) -> tuple[SensorModel, Any]:
    """Features as streamed, forest, calibration and ranges: a model from readings in order.

    With ``leave_out_outliers`` (a sensor learning on the device, whose readings may
    hold anomalies nobody marked), a first forest finds the rows it isolates far more
    easily than the rest (see ``outlier_rows``), and the model is fitted again without them.
    """
    features = training_features(spec, values, group_rows, keep, progress, times)
    cols = spec.forest_columns  # a drift baseline is NaN for its first N readings: it must not cost the forest rows

    def complete(rows: np.ndarray) -> np.ndarray:
        x = rows[:, cols]
        return x[~np.isnan(x).any(axis=1)]

    usable = complete(features)
    if len(usable) < 8:
        raise TrainingError(f"only {len(usable)} usable normal rows; at least 8 are needed")
    forest, estimator = fitter(usable, trees, max_samples, seed)
    all_features = features
    if leave_out_outliers:
        x = features[:, cols]
        outliers = outlier_rows(forest.anomaly_score(np.where(np.isnan(x), np.nanmedian(x, axis=0), x)))
        if outliers.any() and (~outliers).sum() >= 8:
            features = features[~outliers]
            forest, estimator = fitter(complete(features), trees, max_samples, seed)
    wandering = wandering_fields(values, group_rows, keep, spec.fields)
    # The level of a wandering field (its value, its smoothed value) is allowed to roam.
    wandering_levels = np.array(
        [f in wandering and parse_transform(t)[0] in ("value", "mean") for f, t in spec.columns], dtype=bool
    )
    # What is left of a reading after its season wanders when the season does not explain the
    # sensor (a random walk, the weather over days): it gets a wandering level's margin.
    for i in spec.seasonal:
        defined = features[~np.isnan(features[:, i]), i]
        if len(defined) > 2 and lag1_autocorrelation(defined) > WANDERING_AUTOCORRELATION:
            wandering_levels[i] = True
    model = build_model(
        name=name,
        version=version or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        spec=spec,
        forest=forest,
        features=features,
        training={**record, "rows": len(features), "wandering_fields": sorted(wandering)},
        wandering_levels=wandering_levels,
        all_features=all_features,
    )
    return model, estimator


def outlier_rows(raw: np.ndarray) -> np.ndarray:
    """Training rows the forest scores far above the others: over the median by OUTLIER_MADS MADs."""
    median = float(np.median(raw))
    mad = float(np.median(np.abs(raw - median)))
    return raw > median + OUTLIER_MADS * max(mad, 1e-6)


def learn_model(
    spec: FeatureSpec, values: np.ndarray, name: str, version: str, seed: int = 0, keep: np.ndarray | None = None,
    leave_out_outliers: bool = False, times: np.ndarray | None = None,
) -> SensorModel:
    """A model for one sensor from its own readings, fitted with numpy (on the device).

    ``keep`` marks the readings to learn from (default: all); the streaming features
    are computed over every reading, in order, as the live agent saw them. With
    ``leave_out_outliers``, outliers among them are left out (see ``fit_model``).
    """
    record = training_record("learned on the device", [name], numpy_fitter, DEFAULT_TREES, DEFAULT_MAX_SAMPLES, seed, "")
    keep = np.ones(len(values), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    model, _ = fit_model(
        spec, values, {name: np.arange(len(values))}, keep, name, version, numpy_fitter, record, seed=seed,
        leave_out_outliers=leave_out_outliers, times=times,
    )
    return model


def fit_request(request: LearnRequest, version: str) -> SensorModel:
    """The model a learn request asks for (not saved): the live learner, its fit worker, replay and tests share it."""
    return learn_model(request.spec, request.values, name=f"learned:{request.sensor_id}", version=version, keep=request.keep,
                       leave_out_outliers=request.leave_out_outliers, times=request.times)


def lag1_autocorrelation(x: np.ndarray) -> float:
    """Correlation of consecutive readings (1.0 for a constant series: it does not move)."""
    d = x - x.mean()
    denom = float((d * d).sum())
    return float((d[:-1] * d[1:]).sum() / denom) if denom > 0 and len(x) > 2 else 1.0


def wandering_fields(
    values: np.ndarray, group_rows: Mapping[str, np.ndarray], keep: np.ndarray, fields: Sequence[str]
) -> set[str]:
    """Fields whose readings, sensor by sensor, move slowly and persistently (see WANDERING_AUTOCORRELATION)."""
    out = set()
    for j, name in enumerate(fields):
        acs = [lag1_autocorrelation(values[rows[keep[rows]], j]) for rows in group_rows.values() if keep[rows].sum() > 2]
        if acs and float(np.mean(acs)) > WANDERING_AUTOCORRELATION:
            out.add(name)
    return out


def training_record(
    source: str, sensors: Sequence[str], fitter: Fitter, trees: int, max_samples: int, seed: int, command: str
) -> dict[str, Any]:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    if fitter is sklearn_fitter:
        import sklearn

        versions["scikit-learn"] = sklearn.__version__
    return {
        "source": source,
        "sensors": list(sensors),
        "isolation_forest": {
            "n_estimators": trees, "max_samples": max_samples, "random_state": seed,
            "fitted_with": "scikit-learn" if fitter is sklearn_fitter else "numpy (edge_agent.core.forest_fit)",
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "library_versions": versions,
    }
