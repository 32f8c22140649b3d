"""The documentation cannot point nowhere: every relative link resolves, every topic file is in the index."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

DOCS = ROOT / "documentation"
# [text](target) and ![alt](target); the target ends at whitespace (a title may follow) or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def relative_links(path: Path) -> list[str]:
    """Link targets of a markdown file that point into the repository (not URLs, not anchors, not in code blocks)."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code shows syntax, it does not link
    targets = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_link_pattern_finds_relative_links_and_skips_urls_anchors_and_code(tmp_path: Path) -> None:
    sample = tmp_path / "sample.md"
    sample.write_text('See [setup](setup.md#colab), ![plot](img/a.png "title"), [web](https://example.org),\n'
                      "[top](#top), `[not](code.md)` and\n```\n[fenced](fenced.md)\n```\n[last](../README.md)\n")
    assert relative_links(sample) == ["setup.md", "img/a.png", "../README.md"]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(path: Path) -> None:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    broken = [target for target in relative_links(path) if not (path.parent / target).exists()]
    assert not broken, f"{path.relative_to(ROOT)} links to missing files: {', '.join(broken)}"


def test_documentation_index_links_every_topic_file() -> None:
    linked = {Path(target).name for target in relative_links(DOCS / "README.md")}
    topics = {path.name for path in DOCS.glob("*.md")} - {"README.md"}
    assert not topics - linked, f"documentation/README.md does not link: {', '.join(sorted(topics - linked))}"


def test_readme_links_the_documentation_index() -> None:
    assert (ROOT / "README.md").is_file(), "README.md is missing"
    targets = {target.rstrip("/") for target in relative_links(ROOT / "README.md")}
    assert targets & {"documentation", "documentation/README.md"}, "README.md should link documentation/README.md"
