"""The keeper imports the standard library, ``pymgr.protocol`` and two stdlib-only leaves: nothing else of pymgr."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import pymgr
import pymgr.keeper
from tests.importcycles import first_cycle

SRC = Path(pymgr.__file__).parent
KEEPER = sorted((SRC / "keeper").glob("*.py"))
PROTOCOL = sorted((SRC / "protocol" / "keeper").glob("*.py"))

#: pymgr modules the keeper may import: its own package, the link's protocol, and two leaves it shares
#: with the daemon (private directories and files; opening a checked path beneath its base).
ALLOWED = ("pymgr.keeper", "pymgr.protocol.keeper", "pymgr._fsguard", "pymgr._pinpath")
LEAVES = ("_fsguard.py", "_pinpath.py")


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (a function's late import too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            names.add(node.module or "")
            names.update(f"{node.module}.{alias.name}" for alias in node.names if node.module == "pymgr")
    return names


def outside(name: str, allowed: tuple[str, ...]) -> bool:
    top = name.split(".")[0]
    if top != "pymgr":
        return top not in sys.stdlib_module_names and top != "__future__"
    return name != "pymgr" and not any(name == a or name.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("path", KEEPER + PROTOCOL, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_keeper_imports_only_the_standard_library_and_its_allowed_pymgr_modules(path: Path) -> None:
    assert sorted(name for name in imported(path) if outside(name, ALLOWED)) == []


@pytest.mark.parametrize("path", PROTOCOL, ids=lambda p: p.name)
def test_the_link_protocol_imports_nothing_of_the_keeper(path: Path) -> None:
    assert sorted(name for name in imported(path) if outside(name, ("pymgr.protocol.keeper",))) == []


@pytest.mark.parametrize("name", LEAVES)
def test_each_allowed_leaf_imports_only_the_standard_library(name: str) -> None:
    assert sorted(name for name in imported(SRC / name) if outside(name, ())) == []


def test_the_keeper_package_has_no_import_cycle() -> None:
    """Type-only imports count: the request handlers name the loop's state by a Protocol of their own."""
    cycle = first_cycle(pymgr.keeper)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_keeper_package_is_where_it_is_pinned() -> None:
    assert {p.name for p in KEEPER} >= {
        "loop.py",
        "requests.py",
        "spawn.py",
        "treekill.py",
        "proctree.py",
        "runlog.py",
    }
