"""The docs: the generated group table is up to date, no link leaves the repo, and the README's
group table and mkdocs.yml's nav cover what is there.

Fast and in-process: ``scripts/docs_tables.py --check`` as a function, links found by pattern.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import SCRIPTS, load_script

ROOT = SCRIPTS.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

FENCED = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.M | re.S)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
# [text](target "title"), ![alt](target), [label]: target, <a href="...">, <img src="...">, <x://y>
INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML = re.compile(
    r"""<(?:a|img|link|script|iframe|source)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']*)"""
)
AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]*)>")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")


def _without_indented_code(text: str) -> str:
    """``text`` without indented code blocks: lines indented by 4 spaces or more that follow a
    blank line or another such line (a paragraph's indented continuation is kept)."""
    kept, in_code, previous_blank = [], False, True
    for line in text.splitlines():
        indented = line.startswith(("    ", "\t")) and line.strip() != ""
        in_code = indented and (in_code or previous_blank)
        if not in_code:
            kept.append(line)
        previous_blank = line.strip() == ""
    return "\n".join(kept)


def links(text: str) -> list[str]:
    """Every link target in a markdown text, outside code blocks and code spans."""
    text = CODE_SPAN.sub("", _without_indented_code(FENCED.sub("", text)))
    found = []
    for pattern in (INLINE, REFERENCE, HTML, AUTOLINK):
        found += [m.group(1) for m in pattern.finditer(text)]
    return found


def problem(page: Path, target: str) -> str | None:
    """What is wrong with a link of ``page``, or None: it must be a relative path to a file or
    folder of the repo (docs pages: of docs/, which is what mkdocs builds)."""
    if SCHEME.match(target):
        return "leaves the repo (only relative links to files of the repo)"
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return None  # an anchor on the same page
    if path.startswith("/"):
        return "is absolute (use a path relative to the page)"
    resolved = (page.parent / path).resolve()
    home = DOCS if page.is_relative_to(DOCS) else ROOT
    if not resolved.is_relative_to(home):
        return f"points outside {home.relative_to(ROOT.parent)}/"
    if not resolved.exists():
        return "points to a file that does not exist"
    return None


def test_groups_page_is_up_to_date() -> None:
    tables = load_script("docs_tables")
    assert tables.check() is None, tables.check()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_link_leaves_the_repo(page: Path) -> None:
    bad = [
        f"{page.relative_to(ROOT)}: ({target}) {why}"
        for target in links(page.read_text())
        if (why := problem(page, target))
    ]
    assert not bad, "\n".join(bad)


def test_link_finder_sees_every_kind_of_link() -> None:
    text = (
        "[a](x.md) ![b](img/y.png 'title') [c](z.md#part) <a href=\"h.md\">\n"
        "[ref]: r.md\n<https://example.org>\n`[not](code.md)`\n```\n[not](fenced.md)\n```\n"
        "\n    [not](indented.md)\n\n    [not](still.md)\ntext\n    [d](kept.md)\n"
    )
    found = ["x.md", "img/y.png", "z.md#part", "kept.md", "r.md", "h.md", "https://example.org"]
    assert links(text) == found
    assert problem(README, "https://example.org") is not None
    assert problem(README, "docs/index.md#top") is None
    assert problem(DOCS / "index.md", "../README.md") is not None
    assert problem(DOCS / "index.md", "missing.md") is not None


def _readme_groups() -> set[str]:
    """The group names in the first column of the README's "Config groups" table."""
    section = README.read_text().split("## Config groups", 1)
    assert len(section) == 2, "README.md has no '## Config groups' section"
    body = section[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in body.splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2 and not set(cells[1].strip()) <= {"-", " "}:
            names.update(re.findall(r"`([^`]+)`", cells[1]))
    return names


def test_readme_group_table_names_every_group_of_configs() -> None:
    named = _readme_groups()
    present = set(load_script("docs_tables").groups())
    assert not named - present, f"README.md names groups configs/ lacks: {sorted(named - present)}"
    assert not present - named, f"README.md's table lacks the groups {sorted(present - named)}"


def _nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in _nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    return []


def test_mkdocs_nav_lists_every_page() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in config.get("plugins") or []]
    assert not {"social", "privacy"} & set(plugins), "these plugins fetch from the network"


def test_readme_starts_with_the_two_setup_commands() -> None:
    lines = [line.strip() for line in README.read_text().splitlines()[:6]]
    assert any(line.startswith("make fit") for line in lines), lines
    assert any(line.startswith("make test") for line in lines), lines
