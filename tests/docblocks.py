"""The manual's code blocks, as the docs tests and the plug-in test read them: README.md and docs/**/*.md.

A block is marked by an HTML comment on the line before it: `<!-- test: ray -->` (it starts a study on
a local Ray: tests/test_plugins.py runs it), `<!-- test: gpu -->` (it needs a GPU: skipped for that
reason only). Unmarked Python blocks run in tests/test_docs.py, a page's blocks in order, like a notebook.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from helpers import REPO

DOCS = REPO / "docs"
FENCE = re.compile(r"(?:^<!-- test: (\w+) -->\n)?^```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    page: Path
    lang: str
    code: str
    mark: str | None


def pages() -> list[Path]:
    """Every page of the manual, and the README."""
    return [REPO / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)]


def blocks(page: Path, lang: str | None = None) -> list[Block]:
    found = [Block(page, m.group(2), m.group(3), m.group(1)) for m in FENCE.finditer(page.read_text())]
    return [b for b in found if lang is None or b.lang == lang]
