"""The documentation cannot point nowhere: every relative link and #anchor resolves, every topic file is in the index."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

DOCS = ROOT / "documentation"
# [text](target) and ![alt](target); the target ends at whitespace (a title may follow) or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted((ROOT / "benchmarks").rglob("*.md"))]


def anchors(path: Path) -> set[str]:
    """The #anchors GitHub gives a file's headings: rendered text lowercased, punctuation dropped, spaces to hyphens,
    a repeated heading suffixed -1, -2, ..."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for heading in HEADING.findall(text):
        rendered = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
        slug = "".join(ch for ch in rendered.lower() if ch.isalnum() or ch in "-_ ").replace(" ", "-")
        unique, count = slug, 0
        while unique in found:
            count += 1
            unique = f"{slug}-{count}"
        found.add(unique)
    return found


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


def anchored_links(path: Path) -> list[tuple[Path, str]]:
    """(file, anchor) of every link with a #anchor into a markdown file of the repository, the file itself included."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)
    pairs = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or "#" not in target:
            continue
        file, anchor = target.split("#", 1)
        if not file or file.endswith(".md"):
            pairs.append(((path.parent / file) if file else path, anchor))
    return pairs


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


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_anchor_names_a_heading_of_its_file(path: Path) -> None:
    broken = [f"{file.name}#{anchor}" for file, anchor in anchored_links(path)
              if file.is_file() and anchor not in anchors(file)]
    assert not broken, f"{path.relative_to(ROOT)} links to missing headings: {', '.join(broken)}"


def test_anchors_follow_githubs_headings(tmp_path: Path) -> None:
    sample = tmp_path / "sample.md"
    sample.write_text("# Top\n## 2026-11-26, H100 (4), `cuda_graphs: true` (commit 77430b7)\n```\n# not a heading\n```\n"
                      "## Top\n### What [a link](x.md) does: **bold**\n[a](#top-1) [b](sample.md#top) [c](other.md#x)\n")
    assert anchors(sample) == {"top", "2026-11-26-h100-4-cuda_graphs-true-commit-77430b7", "top-1",
                               "what-a-link-does-bold"}
    assert [(file.name, anchor) for file, anchor in anchored_links(sample)] == [
        ("sample.md", "top-1"), ("sample.md", "top"), ("other.md", "x")]


def test_documentation_index_links_every_topic_file() -> None:
    linked = {Path(target).name for target in relative_links(DOCS / "README.md")}
    topics = {path.name for path in DOCS.glob("*.md")} - {"README.md"}
    assert not topics - linked, f"documentation/README.md does not link: {', '.join(sorted(topics - linked))}"


def test_readme_links_the_documentation_index() -> None:
    assert (ROOT / "README.md").is_file(), "README.md is missing"
    targets = {target.rstrip("/") for target in relative_links(ROOT / "README.md")}
    assert targets & {"documentation", "documentation/README.md"}, "README.md should link documentation/README.md"


# A project file named in inline code, e.g. `datasets/raw/prepare.py` or `tests/test_train.py::test_x`.
CODE_PATH = re.compile(r"`(?:(?:python|bash)\s+)?"
                       r"((?:datasets|models|utils|benchmarks|tests|configs|notebooks|documentation|\.ci)/"
                       r"[\w./-]+?\.(?:py|md|yml|sh|ipynb|json|txt))(?:::[\w\[\]-]+)?(?:\s[^`]*)?`")


def code_paths(path: Path) -> list[str]:
    """Project files a markdown file names in inline code (commands included: `python benchmarks/x.py --y`)."""
    return CODE_PATH.findall(FENCE.sub("", path.read_text(encoding="utf-8")))


def test_code_path_pattern_finds_project_files_in_inline_code(tmp_path: Path) -> None:
    sample = tmp_path / "sample.md"
    sample.write_text("`datasets/raw/prepare.py`, `tests/test_train.py::test_a`, `python benchmarks/x.py --n 3`,\n"
                      "`config.yml`, `demo/raw`, `models/`, `utils.summary`\n```\n`models/fenced.py`\n```\n")
    assert code_paths(sample) == ["datasets/raw/prepare.py", "tests/test_train.py", "benchmarks/x.py"]


# The measurement log is left out: its entries name files as they were at the commit they measured.
@pytest.mark.parametrize("path", [path for path in markdown_files() if path.name != "RESULTS.md"],
                         ids=lambda path: str(path.relative_to(ROOT)))
def test_every_project_file_the_docs_name_exists(path: Path) -> None:
    missing = sorted({name for name in code_paths(path) if not (ROOT / name).exists()})
    assert not missing, f"{path.relative_to(ROOT)} names files that do not exist: {', '.join(missing)}"
