"""README.md stays a short map, and the manual under docs/ stays whole.

README.md is the front page of the repository and of the Hugging Face Space: it should say what
the project is, how to start it, and where each topic lives, and leave the rest to docs/. These
checks keep it so: README is short, none of its relative links or images point at a file that
moved or vanished, and every page under docs/ is reachable from the site's navigation (a page
missing from mkdocs.yml's nav is built but linked from nowhere). Plain file reads, no network.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MKDOCS = ROOT / "mkdocs.yml"

MAX_README_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HTML_SOURCE = re.compile(r"""<(?:img|a|source)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def link_targets(markdown: str) -> list[str]:
    """Every link and image target of ``markdown``, outside fenced code blocks."""
    text = FENCE.sub("", markdown)
    return [
        *INLINE_LINK.findall(text),
        *REFERENCE_LINK.findall(text),
        *HTML_SOURCE.findall(text),
    ]


def local_path(target: str) -> str | None:
    """The file part of a relative target; None for URLs (any scheme) and bare #anchors."""
    if SCHEME.match(target) or target.startswith(("#", "//")):
        return None
    return target.split("#", 1)[0].split("?", 1)[0] or None


def nav_pages(nav: Any) -> set[str]:
    """The page paths in a mkdocs ``nav`` (nested lists of ``title: page`` entries)."""
    if isinstance(nav, str):
        return set() if SCHEME.match(nav) else {nav}
    if isinstance(nav, list):
        return set().union(*(nav_pages(item) for item in nav))
    if isinstance(nav, dict):
        return set().union(*(nav_pages(value) for value in nav.values()))
    return set()


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): "
        "move the detail to a page under docs/ and link to it"
    )


def test_readme_links_resolve() -> None:
    targets = link_targets(README.read_text(encoding="utf-8"))
    assert targets, "README.md links to nothing: it should map the docs"
    missing = [
        target
        for target in targets
        if (path := local_path(target)) is not None and not (README.parent / path).exists()
    ]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_every_docs_page_is_in_the_nav() -> None:
    config = yaml.safe_load(MKDOCS.read_text(encoding="utf-8"))
    docs_dir = ROOT / config.get("docs_dir", "docs")
    listed = nav_pages(config.get("nav", []))
    pages = {page.relative_to(docs_dir).as_posix() for page in docs_dir.rglob("*.md")}
    assert pages, f"no pages under {docs_dir}"
    assert not pages - listed, f"pages missing from mkdocs.yml's nav: {sorted(pages - listed)}"
    assert not listed - pages, f"nav entries with no page: {sorted(listed - pages)}"


# Every place a variable is read: through core.env.read, or the thin wrappers around it that
# turn its error into the part's own (an engine that cannot start, a container that cannot).
READ_CALL = re.compile(
    r"""(?:\bread\(\s*[\w.]+,\s*|\b_env(?:_number)?\(\s*|\b_(?:number|port|flag)\(\s*env,\s*)"""
    r""""([A-Z][A-Z0-9_]+)\""""
)
SERVER_SETTING = re.compile(r"""\(\s*"([A-Z][A-Z0-9_]+)",\s*(?:str|int|float)\s*\)""")


def variables_read() -> set[str]:
    """The environment variables the code reads through the one settings reader."""
    names: set[str] = set()
    for path in [*ROOT.glob("components/**/*.py"), *ROOT.glob("container/*.py")]:
        names.update(READ_CALL.findall(path.read_text(encoding="utf-8")))
    state = (ROOT / "components/server/state.py").read_text(encoding="utf-8")
    names.update("LIVE_CAPTIONS_" + name for name in SERVER_SETTING.findall(state))
    return names


def test_every_variable_the_code_reads_is_documented() -> None:
    names = variables_read()
    assert len(names) > 40  # the scan finds the readers (a broken pattern would find none)
    docs = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md"))
    missing = sorted(name for name in names if name not in docs)
    assert not missing, f"read by the code, not in docs/: {missing}"
