"""``replay --plot``: the series, the score and the flagged stretches against any labels, as a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_agent.tools.replay import ReplayRow
from edge_agent.tools.table import SensorTable

MAX_FIELD_PANELS = 8


def _stretches(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) index pairs of the runs where ``mask`` is true, end exclusive."""
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def _x_axis(table: SensorTable, n: int) -> tuple[np.ndarray, bool]:
    """Times (as matplotlib dates) when every row has a timestamp, else reading numbers."""
    stamps = table.timestamps[:n]
    if n and all(t is not None for t in stamps):
        seconds = np.array(stamps, dtype=np.float64)
        return seconds / 86400.0, True  # matplotlib's date unit: days since 1970-01-01 UTC
    return np.arange(n, dtype=np.float64), False


def _edges(x: np.ndarray) -> np.ndarray:
    """Boundaries between readings (n + 1 of them), so a band covers its readings' whole span."""
    if len(x) == 0:
        return np.zeros(1)
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[1:] + x[:-1]) / 2
    return np.r_[x[0] - (mid[0] - x[0]), mid, x[-1] + (x[-1] - mid[-1])]


def plot_replay(path: str | Path, table: SensorTable, rows: Sequence[ReplayRow], threshold: float) -> None:
    """One panel per field (up to eight), then the score; flagged readings in red, labels in grey."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'edge-anomaly-agent[plot]'") from None

    x, timed = _x_axis(table, len(rows))
    flagged = np.array([r.verdict.anomaly == 1 and not r.learning for r in rows])
    learning = np.array([r.learning for r in rows])
    scores = np.array([r.verdict.score for r in rows])
    fields = table.fields[:MAX_FIELD_PANELS]
    fig, axes = plt.subplots(len(fields) + 1, 1, sharex=True, figsize=(12, 1.8 * (len(fields) + 1) + 0.8), squeeze=False)
    panels = list(axes[:, 0])
    edges = _edges(x)
    for ax in panels:
        for a, b in _stretches(learning):
            ax.axvspan(edges[a], edges[b], color="#dfe9f5", lw=0)
        # Flagged stretches fill the lower part of a panel, labelled ones a dark strip on top:
        # where both are, both stay visible (a label band under a flagged one used to vanish).
        for a, b in _stretches(flagged):
            ax.axvspan(edges[a], edges[b], ymax=0.88, color="#f4a3a3", lw=0, alpha=0.9)
        if table.labels is not None:
            for a, b in _stretches(table.labels[: len(rows)] > 0):
                ax.axvspan(edges[a], edges[b], ymin=0.9, color="#444444", lw=0)
    for ax, j in zip(panels, range(len(fields)), strict=False):
        ax.plot(x, table.values[:, j], lw=0.8, color="#1f4e79")
        ax.set_ylabel(fields[j], rotation=0, ha="right", fontsize=8)
    ax = panels[-1]
    ax.plot(x, scores, lw=0.8, color="#7a3e00")
    ax.axhline(threshold, color="#b00000", ls="--", lw=0.8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("score", rotation=0, ha="right", fontsize=8)
    if timed:
        import matplotlib.dates as mdates

        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_xlabel("time (UTC)")
    else:
        ax.set_xlabel("reading")
    legend = "blue: learning   dark strip: labelled anomaly   red: flagged   dashed: threshold"
    fig.suptitle(f"{Path(table.path).name}: {int(flagged.sum())} of {int((~learning).sum())} scored readings flagged\n{legend}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
