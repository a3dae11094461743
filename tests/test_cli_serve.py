"""``pymgr serve``'s lean entry (``pymgr.cli.serve``): same options as the typer command, no CLI stack.

``pymgr.cli.main`` runs a plain ``serve`` command line without importing
typer, rich or httpx; anything else falls through to the typer app.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

import pymgr.service.foreground
from pymgr.cli import main
from pymgr.cli._session import EXIT_ERROR
from pymgr.cli.app import app
from pymgr.cli.app import main as typer_main
from pymgr.cli.daemon import LogFormatChoice
from pymgr.cli.serve import EXIT_NO_DAEMON, LOG_FORMATS, SERVE_HELP, SERVE_OPTIONS, parse_serve

#: What the daemon must never import: the CLI stack (typer, rich) and the HTTP client (httpx);
#: nor the task keeper's modules, which run in the keeper's own process (~1 MiB of RSS here).
CLI_STACK = ("typer", "rich", "httpx", "pymgr.client", "pymgr.cli.app", "pymgr.keeper.loop")

_PROBE = """
import json, sys
from pymgr.cli import main
code = main(["serve", "--config", sys.argv[1]])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "pymgr.toml"
    path.write_text('state_dir = "state"\n')
    return path


def test_the_daemon_path_imports_no_cli_stack(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_key = 1\n")  # fails in load_config, after the daemon's modules are imported
    out = subprocess.run([sys.executable, "-c", _PROBE, str(bad)], capture_output=True, text=True, timeout=60)
    result = json.loads(out.stdout)
    assert result["code"] == pymgr.service.foreground.EXIT_CONFIG, out.stderr
    assert "pymgr.daemon" in result["modules"]  # the probe did reach the daemon
    assert [name for name in CLI_STACK if name in result["modules"]] == []


def test_the_daemon_path_imports_no_argparse(tmp_path: Path) -> None:
    # cli/serve.py reads its four options by hand: argparse would cost 0.33 MiB of the idle daemon's RSS.
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_key = 1\n")
    out = subprocess.run([sys.executable, "-c", _PROBE, str(bad)], capture_output=True, text=True, timeout=60)
    modules = json.loads(out.stdout)["modules"]
    assert "pymgr.config" in modules  # pydantic built the config's models
    assert "argparse" not in modules


def test_options_may_come_in_any_order_and_with_equals(config: Path) -> None:
    parsed = parse_serve(["serve", "--log-level=debug", "--config", str(config), "--log-format", "json"])
    assert parsed == (config, "debug", "json", None)


def test_the_typer_command_has_the_lean_entrys_options() -> None:
    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    assert command.help == SERVE_HELP
    typer_options = {p.name: (p.opts, p.metavar, p.help) for p in command.params}
    assert typer_options == {o.dest: ([o.flag], o.metavar, o.help) for o in SERVE_OPTIONS.values()}
    assert tuple(choice.value for choice in LogFormatChoice) == LOG_FORMATS


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--log-level", "debug", "--log-format", "json"],
        ["--log-format=text", "--log-level=warning", "--log-file", "LOG"],
    ],
)
def test_both_entries_pass_the_same_values(
    args: list[str], config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["serve", "--config", str(config), *[a.replace("LOG", str(tmp_path / "d.log")) for a in args]]
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(pymgr.service.foreground, "serve", lambda *a: calls.append(a) or 78)
    assert parse_serve(argv) is not None
    assert main(argv) == 78  # the lean entry, and the daemon's exit code passed through
    assert typer_main(argv) == 78
    assert calls[0] == calls[1] == parse_serve(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--help"],
        ["serve", "-h"],
        ["serve"],  # --config is required
        ["--json", "serve", "--config", "CONFIG"],  # a global option first
        ["health"],
        ["serve", "--config", "CONFIG", "--config", "CONFIG"],
        ["serve", "--config", "CONFIG", "--log-format", "xml"],
        ["serve", "--config", "CONFIG", "--log-format", "JSON"],  # click's Choice is case-sensitive
        ["serve", "--config", "CONFIG", "--log-file", "DIR"],
        ["serve", "--config", "DIR"],
        ["serve", "--config", "MISSING"],
        ["serve", "--conf", "CONFIG"],  # click takes no abbreviations
        ["serve", "--config", "CONFIG", "extra"],
        ["serve", "--config", "CONFIG", "--log-level", "-v"],
    ],
)
def test_anything_unusual_goes_to_typer(argv: list[str], config: Path, tmp_path: Path) -> None:
    places = {"CONFIG": str(config), "DIR": str(tmp_path), "MISSING": str(tmp_path / "missing.toml")}
    assert parse_serve([places.get(a, a) for a in argv]) is None


def test_help_is_typers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Run the daemon in the foreground" in out
    assert all(option.flag in out for option in SERVE_OPTIONS.values())


def test_a_missing_daemon_is_the_client_error_code() -> None:
    assert EXIT_NO_DAEMON == EXIT_ERROR
