"""The library never imports the apps: `nag.server`, `nag.training`, `nag.cli` and `nag.client` sit on top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

NAG = Path(__file__).resolve().parents[1] / "nag"
APPS = ("nag.server", "nag.training", "nag.cli", "nag.client")


def _is_app(module: str) -> bool:
    return any(module == app or module.startswith(app + ".") for app in APPS)


def _library_files() -> list[Path]:
    return sorted(p for p in NAG.rglob("*.py") if "v1" not in p.parts
                  and not _is_app(".".join(p.relative_to(NAG.parent).with_suffix("").parts)))


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(NAG.parent)))
def test_library_modules_do_not_import_the_apps(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [m for m in imported if _is_app(m)], f"{path} imports an app"
