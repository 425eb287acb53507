"""What the corpus evaluations (eval_skab.py, eval_nab.py) share: naming the files they skip."""

from __future__ import annotations

import sys


def report_skipped(tool: str, skipped: list[str]) -> str:
    """Name each skipped file on stderr; the note for the header (empty when none was skipped)."""
    for reason in skipped:
        print(f"{tool}: skipped {reason}", file=sys.stderr)
    return f" ({len(skipped)} skipped, see stderr)" if skipped else ""
