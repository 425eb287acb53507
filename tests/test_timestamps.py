"""A reading's own time is read by one rule, live (an MQTT payload's ts) and in replay (a CSV's ts column)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.config import SourceConfig
from edge_agent.core.domain import InvalidReading, Reading
from edge_agent.mqtt.ingest import PayloadParser
from edge_agent.tools.replay import readings_of
from edge_agent.tools.table import TableError, read_table

EXPECTED_SECONDS = 1764244800.0  # 2025-11-27T12:00:00Z

CASES = [
    # (ts as a JSON payload carries it, epoch seconds, or None when both must refuse it)
    (EXPECTED_SECONDS, EXPECTED_SECONDS),
    (1764244800, EXPECTED_SECONDS),
    (1764244800500, EXPECTED_SECONDS + 0.5),  # epoch milliseconds
    ("2025-11-27T12:00:00Z", EXPECTED_SECONDS),
    ("2025-11-27T13:00:00+01:00", EXPECTED_SECONDS),
    ("2025-11-27 12:00:00", EXPECTED_SECONDS),  # no zone: UTC
    (0, 0.0),
    (-5, None),  # before 1970
    (1e20, None),  # past the millisecond range too
    ("0001-01-01T00:00:00Z", None),
    ("9999-12-31T23:59:59Z", None),  # past ~5138, and an ISO string is never read as milliseconds
    ("yesterday", None),
]


def _live(ts: object) -> float | None:
    parser = PayloadParser([SourceConfig(topic="sensors/+")], 1024)
    result = parser.parse("sensors/s1", json.dumps({"value": 1.0, "ts": ts}).encode(), received_at=1.0)
    if isinstance(result, InvalidReading):
        assert result.reason == "bad_timestamp", result
        return None
    assert isinstance(result, Reading)
    return result.ts


def _replay(ts: object, tmp_path: Path) -> float | None:
    csv = tmp_path / "r.csv"
    csv.write_text(f"ts,value\n{ts},1.0\n")
    try:
        table = read_table(csv)
    except TableError as e:
        assert "row 2" in str(e) and "'ts'" in str(e), e  # names the row and the column
        return None
    (reading,) = readings_of(table)
    return reading.ts


@pytest.mark.parametrize(("ts", "seconds"), CASES, ids=[repr(c[0]) for c in CASES])
def test_live_and_replay_read_a_timestamp_alike(ts: object, seconds: float | None, tmp_path: Path) -> None:
    assert _live(ts) == seconds
    assert _replay(ts, tmp_path) == seconds


def test_an_empty_timestamp_cell_is_a_reading_without_its_own_time(tmp_path: Path) -> None:
    csv = tmp_path / "r.csv"
    csv.write_text("ts,value\n,1.0\n")
    (reading,) = readings_of(read_table(csv))
    assert reading.ts is None
