"""One client session per command: errors become messages and exit codes in one place."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer

from pymgr.cli._params import _UsageError
from pymgr.cli._render import _printable, _show
from pymgr.client import (
    ActionInfo,
    Client,
    ConnectionFailed,
    Event,
    Health,
    ModuleInfo,
    TaskRecord,
    TaskTypeInfo,
)
from pymgr.errors import PymgrError

#: The daemon answered with an error.
EXIT_ERROR = 1


#: Bad command line; typer (click) uses 2 for its own usage errors too.
EXIT_USAGE = 2


#: sysexits.h EX_UNAVAILABLE: the daemon cannot be reached.
EXIT_UNAVAILABLE = 69


@dataclass(frozen=True, slots=True)
class _Options:
    """The global options, shared by every command through ``ctx.obj``."""

    socket: Path | None
    url: str | None
    json: bool


def _fail(ctx: typer.Context, error: dict[str, Any], exit_code: int) -> NoReturn:
    if ctx.obj.json:
        typer.echo(json.dumps(error, ensure_ascii=False), err=True)
    else:
        typer.echo(f"error: {error['code']}: {_printable(error['message'])}", err=True)
    raise typer.Exit(exit_code)


@contextmanager
def _session(ctx: typer.Context) -> Iterator[Client]:
    """A client for the chosen daemon; errors become messages and exit codes."""
    options: _Options = ctx.obj  # set by _global_options, inherited by every subcommand
    try:
        with Client(socket=options.socket, url=options.url) as client:
            yield client
    except ConnectionFailed as exc:
        _fail(ctx, exc.to_dict(), EXIT_UNAVAILABLE)
    except PymgrError as exc:
        _fail(ctx, exc.to_dict(), EXIT_ERROR)
    except (_UsageError, ValueError) as exc:
        _fail(ctx, {"code": "usage", "message": str(exc)}, EXIT_USAGE)


#: The client's result types: each has ``to_json()``, the wire shape the CLI prints and renders.
_RESULTS = (ActionInfo, Event, Health, ModuleInfo, TaskRecord, TaskTypeInfo)


def _wire(result: Any) -> Any:
    """A client result as the daemon sent it (JSON data): ``--json`` prints what the API carries."""
    if isinstance(result, list):
        return [_wire(item) for item in result]
    return result.to_json() if isinstance(result, _RESULTS) else result


def _run(ctx: typer.Context, request: Callable[[Client], Any], render: Callable[[Any], Any]) -> None:
    """Send one request in a ``_session`` and print its result."""
    with _session(ctx) as client:
        result = _wire(request(client))
    _show(ctx, result, render)
