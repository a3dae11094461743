"""The HTTP package's modules import each other without a cycle, and each imports alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pymgr.transport.http as package

PACKAGE = package.__name__
MODULES = sorted(path.stem for path in Path(package.__file__).parent.glob("*.py") if path.stem != "__init__")


def _imports_within_package(module: str) -> set[str]:
    """The package's modules that ``module`` imports anywhere (TYPE_CHECKING blocks and functions too)."""
    tree = ast.parse((Path(package.__file__).parent / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == PACKAGE:
                found.update(alias.name for alias in node.names if alias.name in MODULES)
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module.removeprefix(PACKAGE + ".").split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name.removeprefix(PACKAGE + ".").split(".")[0])
    return found - {module}


def test_the_package_has_no_import_cycle() -> None:
    graph = {module: _imports_within_package(module) for module in MODULES}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = path[path.index(module) :] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in MODULES:
        visit(module, [])


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {PACKAGE}.{module}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
