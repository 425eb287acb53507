"""Fitting a sensor model with scikit-learn and exporting it for the numpy-only runtime."""

from __future__ import annotations

import fnmatch
import platform
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from edge_agent.features import FeatureSpec, feature_matrix
from edge_agent.forest import Forest
from edge_agent.model import SensorModel, build_model
from edge_agent.table import SensorTable, groups

# The streaming features every model gets unless told otherwise: the reading, its
# change, and how it sits in (and how much it moves over) its last ten readings.
DEFAULT_TRANSFORMS = ("value", "delta", "mean_dev:10", "std:10")
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
    model = build_model(
        name=name,
        version=version or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        spec=spec,
        forest=forest,
        features=features,
        training=training_record(table, group_rows, len(features), trees, max_samples, seed, command),
    )
    return model, estimator


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
