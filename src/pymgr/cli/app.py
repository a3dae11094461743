"""The ``pymgr`` typer app: global options, serve, health, modules, call."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from pymgr import __version__
from pymgr.cli._params import (
    _build_params,
    _find_schema,
)
from pymgr.cli._render import (
    _render_modules,
    _render_record,
    _render_result,
)
from pymgr.cli._session import (
    _Options,
    _run,
    _wire,
)
from pymgr.cli.console import console_app
from pymgr.cli.daemon import LogFormatChoice, daemon_app
from pymgr.cli.fleet import fleet_app
from pymgr.cli.service import service_app
from pymgr.cli.serve import SERVE_HELP, SERVE_OPTIONS, run_serve
from pymgr.cli.tasks import tasks_app
from pymgr.client import DEV_SOCKET, SOCKET_ENV, SYSTEM_SOCKET, Client

_SOCKET_HELP = f"The daemon's Unix socket (default: ./{DEV_SOCKET} if it exists, else {SYSTEM_SOCKET})."


app = typer.Typer(
    name="pymgr",
    help="Run the pymgr daemon, and call its actions and tasks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


app.add_typer(tasks_app, name="tasks")
app.add_typer(daemon_app, name="daemon")
app.add_typer(service_app, name="service")
app.add_typer(console_app, name="console")
app.add_typer(fleet_app, name="fleet")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pymgr {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    socket: Annotated[
        Path | None, typer.Option("--socket", envvar=SOCKET_ENV, metavar="PATH", help=_SOCKET_HELP)
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", metavar="URL", help="Reach the daemon over TCP (http://host:port).")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the exact JSON of the result (errors as JSON on stderr).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """pymgr: a privileged task daemon for web applications."""
    if url is not None and socket is not None:
        source = ctx.get_parameter_source("socket")  # typer's own enum (it vendors click): compare by name
        if source is None or source.name != "ENVIRONMENT":
            raise typer.BadParameter("give --socket or --url, not both", param_hint="--url")
        socket = None  # an explicit --url beats $PYMGR_SOCKET
    ctx.obj = _Options(socket=socket, url=url, json=json_output)


def _serve_option(dest: str, **kwargs: Any) -> Any:
    """The typer option for ``pymgr serve``'s ``dest``, from its one definition in ``cli/serve.py``."""
    option = SERVE_OPTIONS[dest]
    return typer.Option(option.flag, metavar=option.metavar, help=option.help, **kwargs)


# `pymgr.cli.main` runs a plain `serve` command line through `cli/serve.py` without importing
# typer; this command takes the rest (--help, usage errors), so both must accept the same options.
@app.command(help=SERVE_HELP)
def serve(
    config: Annotated[Path, _serve_option("config", exists=True, dir_okay=False)],
    log_level: Annotated[str | None, _serve_option("log_level")] = None,
    log_format: Annotated[LogFormatChoice, _serve_option("log_format")] = LogFormatChoice.text,
    log_file: Annotated[Path | None, _serve_option("log_file", dir_okay=False)] = None,
) -> None:
    raise typer.Exit(run_serve(config, log_level, log_format.value, log_file))


@app.command()
def health(ctx: typer.Context) -> None:
    """Show the daemon's status, version, pid and uptime."""
    _run(ctx, Client.health, _render_record)


@app.command()
def modules(
    ctx: typer.Context,
    allowed: Annotated[
        bool, typer.Option("--allowed", help="Only what you may call (the daemon's policy decides).")
    ] = False,
) -> None:
    """List every module.action with its parameters (? marks optional ones) and what you may call."""
    _run(ctx, lambda client: client.modules(allowed=allowed), _render_modules)


@app.command()
def call(
    ctx: typer.Context,
    module: Annotated[str, typer.Argument(metavar="MODULE", help="The module's name.")],
    action: Annotated[str, typer.Argument(metavar="ACTION", help="The action's name.")],
    params: Annotated[
        list[str] | None,
        typer.Argument(metavar="NAME=VALUE|NAME:=JSON...", help="Parameters, typed by the action's schema."),
    ] = None,
) -> None:
    """Call MODULE.ACTION with parameters and print its result."""

    def request(client: Client) -> Any:
        schema = lambda: _find_schema(_wire(client.modules()), action, actions_of=module)  # noqa: E731
        return client.call(module, action, _build_params(params or [], schema, f"{module}.{action}"))

    _run(ctx, request, _render_result)


def hoist_json(argv: Sequence[str]) -> list[str]:
    """``argv`` with every ``--json`` before ``--`` moved to the front, where the global option is read.

    ``--json`` is one flag of the whole command line: ``pymgr tasks show 2 --json``
    means ``pymgr --json tasks show 2``. No command takes a ``--json`` of its own,
    and a parameter that is the text ``--json`` goes after ``--``.
    """
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [arg for arg in argv[:end] if arg == "--json"]
    return [*flags, *(arg for arg in argv[:end] if arg != "--json"), *argv[end:]]


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run the command line and return its exit code."""
    try:
        app(args=hoist_json(sys.argv[1:] if argv is None else argv), prog_name="pymgr")
    except SystemExit as exc:  # click ends every run this way
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0
