"""Every module imports on its own, and the process-management modules import one way.

An import cycle hidden in function-level imports works until the day one of them moves to the
top of its module, or runs while the other module is half-initialised. `main` starts the
supervisor and the reloader; they must not reach back into `main` (main.py's docstring says
how they share what they need)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

import fastserve

PACKAGE = Path(fastserve.__file__).parent


def package_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(fastserve.__path__, "fastserve.")]
    # __main__ runs the command line when imported.
    return ["fastserve", *sorted(n for n in names if n != "fastserve.__main__")]


@pytest.mark.parametrize("module", package_modules())
def test_module_imports_in_a_fresh_interpreter(module: str) -> None:
    """Alone, so a module that works only because another one was imported first fails."""
    if module == "fastserve.loops.uvloop":
        pytest.importorskip("uvloop")
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


# -- the import graph, read from the source ------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["fastserve", *parts])


def runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under `node` except the bodies of `if TYPE_CHECKING:`, which never run."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING"):
            for other in child.orelse:
                yield other
                yield from runtime_nodes(other)
            continue
        yield child
        yield from runtime_nodes(child)


def imported(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere, function bodies included. Only
    what the source names: the parent packages Python imports first are left out (the root
    one imports `main` and runs before any module, whoever imports what)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from . import x`: the submodule x if there is one, else the package.
            submodules = {f"{base}.{a.name}" for a in node.names} & known
            found.update(submodules or {base})
    return {name for name in found if name in known and name != this}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: imported(path, known) for name, path in paths.items()}


def path_back(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """An import chain from `start` back to itself, if there is one (breadth first)."""
    parents: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(parents[chain[-1]])
                return [*reversed(chain), start]
            if nxt not in parents:
                parents[nxt] = node
                queue.append(nxt)
    return None


def test_the_scan_sees_function_level_imports() -> None:
    """main imports both lazily (inside serve_config): a scan blind to that proves nothing."""
    graph = import_graph()
    assert {"fastserve.supervisor", "fastserve.reload"} <= graph["fastserve.main"]


@pytest.mark.parametrize("module", ["main", "supervisor", "reload"])
def test_no_import_cycle_through(module: str) -> None:
    chain = path_back(import_graph(), f"fastserve.{module}")
    assert chain is None, "import cycle: " + " -> ".join(chain or [])
