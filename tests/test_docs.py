"""The README stays true to the code it documents."""

from __future__ import annotations

import re

from conftest import REPO
from edge_agent.config import config_reference_markdown
from edge_agent.ingest import REASONS


def test_readme_config_reference_is_the_generated_one() -> None:
    assert config_reference_markdown().strip() in (REPO / "README.md").read_text()


def test_readme_lists_every_rejection_reason() -> None:
    readme = (REPO / "README.md").read_text()
    engine_reasons = {"retained", "too_many_sensors", "no_model"}
    for reason in set(REASONS) | engine_reasons:
        assert f"`{reason}`" in readme, reason


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    test_command = commands[1].strip()
    assert "pytest" in test_command
    assert test_command in (REPO / ".ci" / "run").read_text()
