"""The front door stays short and its links stay true (issue 40)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_at_most_300_lines() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    targets = [(page.parent / link).resolve() for link in links if "://" not in link]
    broken = [str(t.relative_to(ROOT)) for t in targets if not t.exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to missing {broken}"
