"""The README and docs/ stay true to the code they document."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from edge_agent.config import config_reference_markdown, config_reference_page
from edge_agent.mqtt.ingest import REASONS

DOCS = REPO / "docs"


def test_configuration_page_is_the_generated_one() -> None:
    page = (DOCS / "configuration.md").read_text()
    assert config_reference_markdown().strip() in page
    assert page == config_reference_page(), "regenerate: edge-agent config-reference --page > docs/configuration.md"


def test_api_page_lists_every_rejection_reason() -> None:
    api = (DOCS / "api.md").read_text()
    engine_reasons = {"retained", "no_model"}
    for reason in set(REASONS) | engine_reasons:
        assert f"`{reason}`" in api, reason


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", readme, re.S)
    test_command = commands[1].strip()
    assert test_command.endswith("&& .ci/check")
    assert test_command in (REPO / ".ci" / "run").read_text()


def _fake_tools(tmp_path: Path, failing: str | None) -> Path:
    """A copy of .ci/check beside a .venv whose ruff, mypy and python log their call and pass, or fail."""
    (tmp_path / ".ci").mkdir()
    shutil.copy2(REPO / ".ci" / "check", tmp_path / ".ci" / "check")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("ruff", "mypy", "python"):
        status = 1 if tool == failing else 0
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{tmp_path}/calls"\nexit {status}\n')
        script.chmod(0o755)
    return tmp_path / "calls"


@pytest.mark.parametrize("failing", [None, "ruff", "mypy", "python"])
def test_the_check_script_runs_lint_types_then_tests_and_fails_on_any(tmp_path: Path, failing: str | None) -> None:
    calls = _fake_tools(tmp_path, failing)
    result = subprocess.run([str(tmp_path / ".ci" / "check"), "-x"], capture_output=True, text=True, timeout=30)
    ran = calls.read_text().splitlines()
    expected = ["ruff check .", "mypy ", "python -m pytest -x"]
    if failing is None:
        assert result.returncode == 0, result.stderr
        assert ran == expected
    else:
        assert result.returncode != 0
        stop = [line.split()[0] for line in expected].index(failing)
        assert ran == expected[: stop + 1], "a failing step must stop the gate"


def _anchors(page) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens (code blocks skipped)."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_every_local_link_in_the_readme_and_docs_resolves() -> None:
    """A link to a page, a file or a heading of the repository names one that exists.

    docs/results/ is written by bench/, so a link into it may wait for its first run.
    """
    checked = 0
    for page in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path = (page.parent / target).resolve() if target else page
            if path.relative_to(REPO.resolve()).parts[:2] == ("docs", "results") and not path.exists():
                continue
            assert path.exists(), f"{page.relative_to(REPO)} links to {target}, which does not exist"
            if anchor:
                assert anchor in _anchors(path), f"{page.relative_to(REPO)} links to {target}#{anchor}: no such heading"
            checked += 1
    assert checked > 20


def test_readme_figures_are_the_generated_ones() -> None:
    # The README's figures are copied from docs/results/ by bench/report.py, never typed in.
    from bench.report import FIGURES_END, FIGURES_START, headlines

    text = (REPO / "README.md").read_text()
    block = text[text.index(FIGURES_START) + len(FIGURES_START):text.index(FIGURES_END)]
    assert block.strip().splitlines() == headlines()
