"""The README and docs/ stay true to the code they document."""

from __future__ import annotations

import re

from conftest import REPO
from edge_agent.config import config_reference_markdown, config_reference_page
from edge_agent.ingest import REASONS

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
    assert "pytest" in test_command
    assert test_command in (REPO / ".ci" / "run").read_text()


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
