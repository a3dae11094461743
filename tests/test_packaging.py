"""The wheel: a light base install (the client and the CLI), the daemon behind the ``daemon`` extra.

The wheel is built with ``pip wheel --no-deps`` from a copy of this
checkout's sources (so that the build leaves no ``build/`` behind in the
checkout); pip fetches the build backend, setuptools, from the package
index. The slow
test installs it, without extras, into a new venv, as a web app would
(docs/install.md, "Install the package"), and runs the client and the CLI there
against a real daemon.
"""

from __future__ import annotations

import email.parser
import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymgr.cli import console as console_cli
from pymgr.cli.daemondeps import DAEMON_MODULES, FLEET_MODULES, INSTALL_HINT
from tests.conftest import REPO, Daemon

#: The light install's dependencies, exactly: what ``pymgr.client`` and the CLI import.
BASE = ["httpx>=0.27", "rich>=13", "typer<0.27,>=0.26.8"]

#: The ``daemon`` extra, exactly (markers as the wheel's metadata writes them).
DAEMON = [
    "httptools>=0.6",
    "prometheus-client>=0.20",
    "psutil>=5.9",
    "pydantic>=2.6",
    'python-daemon>=3.0; sys_platform != "win32"',
    'pywin32>=306; sys_platform == "win32"',
    'uvloop>=0.19; sys_platform != "win32"',
]

#: The ``console`` extra, exactly.
CONSOLE = [
    "argon2-cffi>=23.1",
    "jinja2>=3.1",
    "pydantic>=2.6",
    "python-multipart>=0.0.9",
    "starlette>=0.37",
    "uvicorn>=0.30",
]

PIP_TIMEOUT_S = 600


def _pip(python: Path | str, *args: str) -> None:
    out = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out_dir = tmp_path_factory.mktemp("wheel")
    _pip(sys.executable, "wheel", "--no-deps", "-w", str(out_dir), str(source))
    [built] = out_dir.glob("pymgr-*.whl")
    return built


def _requires(wheel: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The wheel's Requires-Dist: the base list, and each extra's list (markers without the extra)."""
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    base: list[str] = []
    extras: dict[str, list[str]] = {}
    for requirement in metadata.get_all("Requires-Dist") or []:
        match = re.fullmatch(r'(.*?)(?:;\s*(.*?))?\s*(?:and )?extra == "(\w+)"', requirement)
        if match is None:
            base.append(requirement)
            continue
        spec, marker, extra = match.groups()
        extras.setdefault(extra, []).append(f"{spec.rstrip(';')}; {marker}" if marker else spec.rstrip("; "))
    return sorted(base), {extra: sorted(reqs) for extra, reqs in extras.items()}


def test_the_wheel_requires_the_client_only_and_the_daemon_extra_the_rest(wheel: Path) -> None:
    base, extras = _requires(wheel)
    assert base == BASE
    assert extras["daemon"] == DAEMON
    assert set(extras) == {"daemon", "console", "fleet", "test", "bench"}
    assert extras["console"] == CONSOLE
    assert "pymgr[fleet]" in extras["test"]


def test_the_daemon_check_knows_every_distribution_of_the_extra(wheel: Path) -> None:
    _, extras = _requires(wheel)
    names = {re.match(r"[\w.-]+", requirement)[0] for requirement in extras["daemon"]}  # type: ignore[index]
    assert set(DAEMON_MODULES) == names


def test_the_console_check_knows_every_distribution_of_its_extra() -> None:
    modules = {"argon2-cffi": "argon2", "python-multipart": "multipart"}
    names = {re.match(r"[\w.-]+", r)[0] for r in CONSOLE}  # type: ignore[index]
    assert set(console_cli.CONSOLE_MODULES) == {modules.get(n, n) for n in names}


def test_the_wheel_ships_the_consoles_templates_and_htmx(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"pymgr/console/templates/base.html", "pymgr/console/static/htmx-2.0.11.min.js"} <= names
    assert "pymgr/console/static/htmx-LICENSE.txt" in names


def test_the_fleet_check_knows_every_distribution_of_its_extra(wheel: Path) -> None:
    _, extras = _requires(wheel)
    names = {re.match(r"[\w.-]+", requirement)[0] for requirement in extras["fleet"]}  # type: ignore[index]
    assert set(FLEET_MODULES) == names


def test_the_wheel_says_it_is_typed(wheel: Path) -> None:
    """PEP 561: without ``py.typed`` a type checker treats every client result as ``Any``."""
    with zipfile.ZipFile(wheel) as archive:
        assert "pymgr/py.typed" in archive.namelist()


# ---------------------------------------------------------------- the light install, for real


@pytest.fixture(scope="module")
def light_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new venv with the wheel installed without extras, its dependencies from the package index."""
    venv = tmp_path_factory.mktemp("light") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=PIP_TIMEOUT_S)
    _pip(venv / "bin" / "python", "install", str(wheel))
    yield venv / "bin"


def _in(bin_dir: Path, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.mark.slow
def test_the_light_install_has_no_daemon_dependency(light_venv: Path) -> None:
    script = (
        "import importlib.util, json;"
        f"print(json.dumps([m for m, _ in {list(DAEMON_MODULES.values())!r} if importlib.util.find_spec(m)]))"
    )
    out = _in(light_venv, "python", "-c", script)
    assert (out.returncode, out.stderr) == (0, "")
    assert json.loads(out.stdout) == []
    fleet = f"import importlib.util; print([m for m in {list(FLEET_MODULES.values())!r} if importlib.util.find_spec(m)])"
    assert _in(light_venv, "python", "-c", fleet).stdout == "[]\n"


@pytest.mark.slow
def test_the_light_install_has_no_console_dependency_and_says_what_to_install(
    light_venv: Path, tmp_path: Path
) -> None:
    script = (
        "import importlib.util, json;"
        f"print(json.dumps([m for m in {list(console_cli.CONSOLE_MODULES)!r} if importlib.util.find_spec(m)]))"
    )
    out = _in(light_venv, "python", "-c", script)
    assert (out.returncode, json.loads(out.stdout)) == (0, [])
    out = _in(light_venv, "pymgr", "console", "--config", str(tmp_path / "console.toml"))
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == (
        "error: pymgr console needs the console's dependencies (starlette is missing): "
        "pip install 'pymgr[console]'\n"
    )


@pytest.mark.slow
def test_the_light_install_imports_the_client_and_says_what_modules_need(light_venv: Path) -> None:
    script = (
        "import pymgr, pymgr.client\n"
        "assert pymgr.PymgrError is pymgr.errors.PymgrError and pymgr.client.Client\n"
        "try:\n    pymgr.Module\nexcept ModuleNotFoundError as exc:\n    print(exc)\n"
    )
    out = _in(light_venv, "python", "-c", script)
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == (
        "pymgr.Module is for writing daemon modules and needs the daemon's dependencies "
        f"(pydantic is missing): {INSTALL_HINT}\n"
    )


@pytest.mark.slow
def test_the_light_cli_talks_to_a_daemon(light_venv: Path, daemon: Daemon) -> None:
    assert _in(light_venv, "pymgr", "--help").returncode == 0
    out = _in(light_venv, "pymgr", "--socket", str(daemon.socket), "--json", "call", "demo", "echo", "a=1")
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    assert json.loads(out.stdout) == {"a": "1"}
    out = _in(light_venv, "pymgr", "--socket", str(daemon.socket), "tasks", "types", "--json")
    assert out.returncode == 0 and "scan" in [t["name"] for t in json.loads(out.stdout)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "command", "code"),
    [
        (["serve", "--config", "CONFIG"], "pymgr serve", 1),
        (["serve", "--config", "CONFIG", "--log-format", "json"], "pymgr serve", 1),
        (["daemon", "status"], "pymgr daemon", 5),
        (["service", "status"], "pymgr service status", 1),
    ],
)
def test_the_daemon_commands_say_what_to_install(
    light_venv: Path, tmp_path: Path, argv: list[str], command: str, code: int
) -> None:
    config = tmp_path / "pymgr.toml"
    config.write_text('state_dir = "state"\n')
    out = _in(light_venv, "pymgr", *[str(config) if a == "CONFIG" else a for a in argv], cwd=tmp_path)
    assert (out.returncode, out.stdout) == (code, "")
    assert (
        out.stderr
        == f"error: {command} needs the daemon's dependencies (pydantic is missing): {INSTALL_HINT}\n"
    )


@pytest.mark.slow
def test_the_daemon_commands_help_works_in_the_light_install(light_venv: Path) -> None:
    for argv in (["serve", "--help"], ["daemon", "status", "--help"], ["service", "install", "--help"]):
        out = _in(light_venv, "pymgr", *argv)
        assert (out.returncode, out.stderr) == (0, ""), argv
