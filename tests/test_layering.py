"""The house drawn from the imports.

The apps (`nag.server`, `nag.pipeline`, `nag.cli`, `nag.client`) sit on top: the library never imports
them. No import runs back up, between the folders of `nag/` or between its modules. No library module
imports a `nag` module inside a function to dodge that layering (the apps may: `nag --help` stays fast).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

NAG = Path(__file__).resolve().parents[1] / "nag"
APPS = ("nag.server", "nag.pipeline", "nag.cli", "nag.client")


def _is_app(module: str) -> bool:
    return any(module == app or module.startswith(app + ".") for app in APPS)


def _module(path: Path) -> str:
    parts = path.relative_to(NAG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files() -> list[Path]:
    return sorted(p for p in NAG.rglob("*.py") if "v1" not in p.relative_to(NAG).parts)


def _library_files() -> list[Path]:
    return [p for p in _files() if not _is_app(_module(p))]


def _imported(node: ast.AST, submodules: bool = True) -> list[str]:
    """The modules an import statement names; `from a import b` names `a`, and `a.b` in case b is a module."""
    if isinstance(node, ast.ImportFrom) and node.module:
        return [node.module] + ([f"{node.module}.{alias.name}" for alias in node.names] if submodules else [])
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return []


def _is_nag(module: str) -> bool:
    return module == "nag" or module.startswith("nag.")


def _function_local_imports(tree: ast.AST) -> Iterator[ast.stmt]:
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from (n for n in ast.walk(func) if isinstance(n, (ast.Import, ast.ImportFrom)))


def _type_checking_imports(tree: ast.AST) -> set[int]:
    """ids of the import statements under `if TYPE_CHECKING:` (annotations only; nothing runs them)."""
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING" for stmt in node.body for n in ast.walk(stmt)}


def _graph(node_of: dict[str, str], runtime_only: bool = False) -> dict[str, set[str]]:
    """Arrows between the nodes that `node_of` maps nag's modules to (`nag.v1`, the generated stubs, aside);
    `runtime_only` leaves out the imports made for annotations alone."""
    graph: dict[str, set[str]] = {node: set() for node in node_of.values()}
    for path in _files():
        source = node_of[_module(path)]
        tree = ast.parse(path.read_text())
        skip = _type_checking_imports(tree) if runtime_only else set()
        for stmt in ast.walk(tree):
            if id(stmt) in skip:
                continue
            for module in _imported(stmt):
                target = node_of.get(module)
                if target is not None and target != source:
                    graph[source].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def _folder(module: str) -> str:
    """`nag.pnag.frontier` -> `core`, `nag.cli` -> `cli`; the package itself is `nag`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(NAG.parent)))
def test_library_modules_do_not_import_the_apps(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = [m for node in ast.walk(tree) for m in _imported(node)]
    assert not [m for m in imported if _is_app(m)], f"{path} imports an app"


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(NAG.parent)))
def test_library_modules_import_nag_modules_at_module_level(path: Path) -> None:
    tree = ast.parse(path.read_text())
    local = sorted({m for node in _function_local_imports(tree) for m in _imported(node, False) if _is_nag(m)})
    assert not local, f"{path} imports {local} inside a function"


def test_no_import_runs_back_up_between_the_folders_of_nag() -> None:
    graph = _graph({_module(p): _folder(_module(p)) for p in _files()})
    assert {"policy", "bundle", "pnag", "export", "supernet"} <= set(graph)
    cycle = _cycle(graph)
    assert cycle is None, "folders import each other: " + " -> ".join(cycle or [])


def test_no_import_runs_back_up_between_the_modules_of_nag() -> None:
    # Within a folder, a profile and its kind name each other in annotations (`if TYPE_CHECKING:`); between
    # folders (above) even those count.
    cycle = _cycle(_graph({_module(p): _module(p) for p in _files()}, runtime_only=True))
    assert cycle is None, "modules import each other: " + " -> ".join(cycle or [])


def test_a_cycle_is_found() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
