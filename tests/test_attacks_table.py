"""bench/attacks.py: every row names tests that exist, and a failed test shows as not held."""

from __future__ import annotations

import re
from pathlib import Path

from bench import attacks

REPO = Path(__file__).resolve().parents[1]


def test_every_attack_names_tests_that_exist() -> None:
    for _, _, nodes in attacks.ATTACKS:
        for node in nodes:
            path, name = node.split("::")
            assert re.search(rf"^def {re.escape(name)}\(", (REPO / path).read_text(), re.M), node


def test_a_failed_test_marks_its_attack_not_held_and_figures_are_shown() -> None:
    first, second = attacks.ATTACKS[0][2][0], attacks.ATTACKS[1][2][0]
    results = {
        f"{first}[a]": ("passed", "FIGURE: 3 of 3\n"),
        f"{first}[b]": ("failed", ""),
        second: ("passed", "noise\nFIGURE: 42 ms\n"),
    }
    rows = [line for line in attacks.table(results, {}).splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(attacks.ATTACKS)
    assert "**no** (1 of 2)" in rows[0] and "3 of 3" in rows[0]
    assert "| yes | 42 ms |" in rows[1]
    assert "**no** (0 of 0)" in rows[2]  # a row whose tests did not run is not held either
