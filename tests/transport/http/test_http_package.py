"""The HTTP package's modules import each other without a cycle, and each imports alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pymgr.transport.http as package
from tests.importcycles import first_cycle, modules_of

PACKAGE = package.__name__
MODULES = modules_of(package)


def test_the_package_has_no_import_cycle() -> None:
    cycle = first_cycle(package)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {PACKAGE}.{module}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
