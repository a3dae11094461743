"""``pymgr console``: serve the web console, and ``pymgr console adduser`` to manage its users.

Rules:
- The console's dependencies are the ``console`` extra; without them, both commands say what to
  install in one line (exit 1) instead of a traceback. Nothing of the console is imported before.
- ``adduser`` asks for the password twice, without echo; ``--password-file`` reads it from a file
  instead (scripts, ``make run``), never from the command line, where ``ps`` would show it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

#: The console extra's modules (pyproject.toml), checked before anything of the console is imported.
CONSOLE_MODULES = ("starlette", "jinja2", "uvicorn", "argon2", "multipart", "pydantic")
INSTALL_HINT = "pip install 'pymgr[console]'"

console_app = typer.Typer(
    help="The web console: serve it (--config FILE), or add a user (adduser NAME).",
    invoke_without_command=True,
    add_completion=False,
)

_CONFIG = typer.Option(
    "--config", metavar="FILE", help="The console's config file: its console table, or the whole file."
)


def _need_extra(command: str) -> None:
    missing = next((m for m in CONSOLE_MODULES if importlib.util.find_spec(m) is None), None)
    if missing is not None:
        typer.echo(
            f"error: {command} needs the console's dependencies ({missing} is missing): {INSTALL_HINT}",
            err=True,
        )
        raise typer.Exit(1)


@console_app.callback()
def console(ctx: typer.Context, config: Annotated[Path | None, _CONFIG] = None) -> None:
    """Serve the web console (never as root: see docs/console.md)."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        typer.echo("error: pymgr console needs --config FILE (docs/console.md)", err=True)
        raise typer.Exit(2)
    _need_extra("pymgr console")
    from pymgr.console.run import ConsoleConfigError, RootRefused, serve

    try:
        serve(config)
    except (ConsoleConfigError, RootRefused) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _password(password_file: Path | None) -> str:
    if password_file is not None:
        lines = password_file.read_text().splitlines()
        return lines[0] if lines else ""
    first = typer.prompt("Password", hide_input=True)
    if typer.prompt("Password again", hide_input=True) != first:
        typer.echo("error: the two passwords differ; nothing was changed", err=True)
        raise typer.Exit(1)
    return str(first)


@console_app.command()
def adduser(
    name: Annotated[str, typer.Argument(help="The person's name (console:NAME to the daemon's policy).")],
    config: Annotated[Path, _CONFIG],
    role: Annotated[
        list[str] | None,
        typer.Option("--role", help="A role of the person (role:NAME to the policy); repeat for more."),
    ] = None,
    password_file: Annotated[
        Path | None,
        typer.Option("--password-file", metavar="FILE", help="Read the password from FILE's first line."),
    ] = None,
) -> None:
    """Add a user to the console's users file, or give an existing one a new password and roles."""
    _need_extra("pymgr console adduser")
    from pymgr.console import users
    from pymgr.console.config import ConsoleConfigError, load_config

    try:
        path = load_config(config).users_file
        users.add(path, name, _password(password_file), role or [])
    except (ConsoleConfigError, users.UsersFileError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{name} can sign in (roles: {', '.join(role or []) or 'none'}); users file {path}")
