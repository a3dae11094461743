"""Import cycles among the modules of one package, read from their source (``TYPE_CHECKING`` blocks and
late imports in functions count: a cycle a reader must follow is one whatever runs first)."""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType


def modules_of(package: ModuleType) -> list[str]:
    """The package's own modules (``__init__`` left out), by name."""
    assert package.__file__ is not None
    return sorted(path.stem for path in Path(package.__file__).parent.glob("*.py") if path.stem != "__init__")


def _imports_within(package: ModuleType, module: str, modules: list[str]) -> set[str]:
    """The package's modules that ``module`` imports anywhere."""
    assert package.__file__ is not None
    name = package.__name__
    tree = ast.parse((Path(package.__file__).parent / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == name:
                found.update(alias.name for alias in node.names if alias.name in modules)
            elif node.module.startswith(name + "."):
                found.add(node.module.removeprefix(name + ".").split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(name + "."):
                    found.add(alias.name.removeprefix(name + ".").split(".")[0])
    return found - {module}


def first_cycle(package: ModuleType) -> list[str] | None:
    """The first import cycle found among the package's modules (``a -> b -> a``), or None."""
    modules = modules_of(package)
    graph = {module: _imports_within(package, module, modules) for module in modules}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            if (cycle := visit(imported, [*path, module])) is not None:
                return cycle
        done.add(module)
        return None

    for module in modules:
        if (cycle := visit(module, [])) is not None:
            return cycle
    return None
