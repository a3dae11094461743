"""The core and the codecs depend on nothing at the edges (docs/architecture.md, "Packages").

The keeper's own rule is pinned in tests/keeper/test_imports.py; this file reuses its walker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.keeper.test_imports import SRC, imported, outside

#: What the core may import of pymgr: itself, the errors, what it counts calls with, and a
#: standard-library leaf (a path param opened beneath its base without following links).
CORE_ALLOWED = ("pymgr.core", "pymgr.errors", "pymgr.metrics", "pymgr._pinpath")
#: Libraries the core may use: the params are pydantic models.
CORE_LIBRARIES = ("pydantic", "pydantic_core")
CORE = sorted((SRC / "core").glob("*.py"))
LEGACY_CODEC = sorted((SRC / "protocol").glob("legacy*.py"))


def _edges(path: Path, allowed: tuple[str, ...], libraries: tuple[str, ...] = ()) -> list[str]:
    names = imported(path)
    return sorted(n for n in names if outside(n, allowed) and n.split(".")[0] not in libraries)


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_the_core_imports_nothing_of_transport_auth_tasks_or_storage(path: Path) -> None:
    assert _edges(path, CORE_ALLOWED, CORE_LIBRARIES) == []


@pytest.mark.parametrize("path", LEGACY_CODEC, ids=lambda p: p.name)
def test_the_legacy_codec_is_pure(path: Path) -> None:
    names = imported(path)
    assert not {"socket", "asyncio", "selectors", "os"} & names, "the codec does no I/O"
    assert _edges(path, ("pymgr.protocol.legacy", "pymgr.protocol.legacy_events", "pymgr.errors")) == []


def test_metrics_the_core_counts_with_import_nothing_of_pymgr() -> None:
    assert _edges(SRC / "metrics.py", ()) == []


#: What the web console may import of pymgr: itself, the client (its only way to the daemon),
#: the errors the client raises, the keeper's pure progress-line filter (a log shown without them),
#: the standard-library leaf that says which params are secret (hidden as the audit redacts them),
#: and the one that clears a stale Unix socket before the daemon or the console binds its own.
CONSOLE_ALLOWED = (
    "pymgr.console",
    "pymgr.client",
    "pymgr.errors",
    "pymgr.keeper.progress",
    "pymgr._secretparam",
    "pymgr._unixsocket",
)
CONSOLE = sorted((SRC / "console").glob("*.py"))


@pytest.mark.parametrize("path", CONSOLE, ids=lambda p: p.name)
def test_the_console_reaches_the_daemon_through_the_client_only(path: Path) -> None:
    names = {n for n in imported(path) if n == "pymgr" or n.startswith("pymgr.")}
    assert _edges_of(names, CONSOLE_ALLOWED) == []


def _edges_of(names: set[str], allowed: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if outside(n, allowed))


#: The modules that may import the fleet (docs/architecture.md): the daemon starts its agent, the CLI submits.
FLEET_USERS = {"daemon.py", "cli/fleet.py", "cli/fleetjobs.py", "cli/_fleetshared.py"}


def test_the_fleet_is_an_edge_only_the_daemon_and_its_cli_reach() -> None:
    users = {
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if "fleet" not in path.relative_to(SRC).parts[:1]
        and any(name == "pymgr.fleet" or name.startswith("pymgr.fleet.") for name in imported(path))
    }
    assert users == FLEET_USERS


def test_the_job_codec_does_no_io() -> None:
    names = imported(SRC / "fleet" / "jobs.py")
    assert not {"socket", "asyncio", "selectors", "os", "redis"} & names
