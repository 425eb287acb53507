"""Fitting a sensor model with scikit-learn and exporting it for the numpy-only runtime."""

from __future__ import annotations

import fnmatch
import platform
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from edge_agent.features import FeatureSpec, feature_matrix, parse_transform
from edge_agent.forest import Forest
from edge_agent.model import SensorModel, build_model
from edge_agent.table import SensorTable, groups

# The streaming features every model gets unless told otherwise: the reading, its
# change, how many readings in a row it repeated (a frozen sensor), its level
# smoothed over the last 30 readings (a shift of a few noise widths stands out
# there) and how much it moved over the last ten.
DEFAULT_TRANSFORMS = ("value", "delta", "repeats", "mean:30", "std:10")
# A field whose consecutive training readings correlate more than this wanders
# (temperatures warming up, slow process values): its level is not expected to stay
# inside the training range: it gets a much wider margin (model.WANDERING_MARGIN).
WANDERING_AUTOCORRELATION = 0.8
DEFAULT_TREES = 100
DEFAULT_MAX_SAMPLES = 256


class TrainingError(ValueError):
    """Training data that cannot give a model (too few rows, nothing selected)."""


def fit_forest(features: np.ndarray, trees: int, max_samples: int, seed: int) -> tuple[Forest, Any]:
    """Fit scikit-learn's IsolationForest; return it as arrays and as the estimator."""
    from sklearn.ensemble import IsolationForest  # training only: the runtime never imports it

    x = features[~np.isnan(features).any(axis=1)]
    estimator = IsolationForest(
        n_estimators=trees,
        max_samples=min(max_samples, len(x)),
        random_state=seed,
    ).fit(x)
    return Forest.from_sklearn(estimator), estimator


def training_features(
    spec: FeatureSpec, values: np.ndarray, group_rows: Mapping[str, np.ndarray], keep: np.ndarray
) -> np.ndarray:
    """Features of every group as streamed, keeping the rows ``keep`` marks (normal ones)."""
    parts = []
    for rows in group_rows.values():
        feats = feature_matrix(spec, values[rows])
        parts.append(feats[keep[rows]])
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
) -> tuple[SensorModel, Any]:
    """Train on the normal rows of a table (labelled anomalies are left out)."""
    group_rows = groups(table)
    if sensor_pattern is not None:
        group_rows = {s: r for s, r in group_rows.items() if fnmatch.fnmatchcase(s, sensor_pattern)}
        if not group_rows:
            raise TrainingError(f"{table.path}: no sensor_id matches {sensor_pattern!r}")
    keep = np.ones(len(table), dtype=bool) if table.labels is None else table.labels == 0
    spec = FeatureSpec(fields=tuple(table.fields), transforms=tuple(transforms))
    features = training_features(spec, table.values, group_rows, keep)
    complete = int((~np.isnan(features).any(axis=1)).sum())
    if complete < 8:
        raise TrainingError(f"{table.path}: only {complete} usable normal rows; at least 8 are needed")
    forest, estimator = fit_forest(features, trees, max_samples, seed)
    wandering = wandering_fields(table.values, group_rows, keep, spec.fields)
    # The level of a wandering field (its value, its smoothed value) is allowed to roam.
    wandering_levels = np.array(
        [f in wandering and parse_transform(t)[0] in ("value", "mean") for f, t in spec.columns], dtype=bool
    )
    model = build_model(
        name=name,
        version=version or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        spec=spec,
        forest=forest,
        features=features,
        training={
            **training_record(table, group_rows, len(features), trees, max_samples, seed, command),
            "wandering_fields": sorted(wandering),
        },
        wandering_levels=wandering_levels,
    )
    return model, estimator


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
    table: SensorTable, group_rows: Mapping[str, np.ndarray], rows: int, trees: int,
    max_samples: int, seed: int, command: str,
) -> dict[str, Any]:
    import sklearn

    return {
        "source": table.path,
        "rows": rows,
        "sensors": sorted(s for s in group_rows if s),
        "isolation_forest": {"n_estimators": trees, "max_samples": max_samples, "random_state": seed},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "library_versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
        },
    }
