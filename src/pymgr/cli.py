"""The ``pymgr`` command: run the daemon, and talk to it as an operator or a script.

Rules:
- Every command that talks to the daemon runs inside ``_session``, which
  maps errors to exit codes in one place: 1 the daemon replied with an
  error, 2 a usage error (ours, or typer's own), 69 (EX_UNAVAILABLE) the
  daemon cannot be reached.
- ``--json`` prints exactly the JSON of the result on stdout (and the error
  object on stderr), nothing else; without it, output is for people.
- Text from the daemon is data, never markup: it reaches the terminal as
  ``rich.text.Text`` with control and bidi characters escaped.
- ``name=value`` arguments are typed by the JSON Schema the daemon publishes
  for the action or task type; ``name:=JSON`` passes a raw JSON value.
- typer and rich are imported here and nowhere else.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pymgr import __version__
from pymgr.client import DEV_SOCKET, SOCKET_ENV, SYSTEM_SOCKET, Client, ConnectionFailed
from pymgr.errors import Forbidden, PymgrError

#: The daemon answered with an error.
EXIT_ERROR = 1
#: Bad command line; typer (click) uses 2 for its own usage errors too.
EXIT_USAGE = 2
#: sysexits.h EX_UNAVAILABLE: the daemon cannot be reached.
EXIT_UNAVAILABLE = 69
#: Console width when stdout is not a terminal: wide enough that a table row
#: stays on one line for grep and awk (COLUMNS still wins when set).
_PIPE_WIDTH = 1000
#: Control characters (except tab and newline), DEL, C1 and bidi overrides:
#: a task key or action result must not move the cursor or reorder the line.
_UNSAFE_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: How deep $ref/anyOf nesting is followed: past what pydantic emits; stops a $ref cycle.
_MAX_SCHEMA_DEPTH = 8
_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_SHORT_TYPES = dict(integer="int", number="float", boolean="bool", string="str", array="list", object="dict")
_TABLE_STYLE: dict[str, Any] = {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False}
_SOCKET_HELP = f"The daemon's Unix socket (default: ./{DEV_SOCKET} if it exists, else {SYSTEM_SOCKET})."

app = typer.Typer(
    name="pymgr",
    help="Run the pymgr daemon, and call its actions and tasks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tasks_app = typer.Typer(help="Background tasks: list, show, start, stop, types.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")


class _UsageError(Exception):
    """A command-line mistake found after parsing (a bad name=value)."""


@dataclass(frozen=True, slots=True)
class _Options:
    """The global options, shared by every command through ``ctx.obj``."""

    socket: Path | None
    url: str | None
    json: bool


def _printable(text: str) -> str:  # control characters as \x1b-style escapes
    return _UNSAFE_CHARS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _text(value: Any) -> Text:
    if value is None:
        return Text("-")
    if isinstance(value, dict | list):
        return Text(_printable(json.dumps(value, ensure_ascii=False)))
    return Text(_printable(str(value)))


def _console() -> Console:
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=_PIPE_WIDTH if wide else None, highlight=False)


def _when(value: Any) -> Any:
    """A timestamp (epoch seconds or ISO 8601) as local time to the second; else as is."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")
        if isinstance(value, str):
            return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        pass  # not a time after all: show what the daemon sent
    return value


def _exit_or_signal(record: dict[str, Any]) -> Any:
    if record.get("exit_code") is not None:
        return record["exit_code"]
    sent = record.get("signal")  # the daemon sends a name ("SIGTERM"); a number is named here
    try:
        return signal.Signals(sent).name if isinstance(sent, int) else sent
    except ValueError:  # no such signal here: show the number as sent
        return sent


def _record_cell(name: str, value: Any) -> Any:
    if name.endswith("_at"):
        return _when(value)
    if name == "argv" and isinstance(value, list):
        return shlex.join(str(part) for part in value)
    return value


def _render_record(record: Any) -> Any:
    """A dict as aligned ``name  value`` lines (a task record, the health status)."""
    if not isinstance(record, dict):
        return _text(record)
    width = max(map(len, map(str, record)), default=0)
    lines = Text()
    for name, value in record.items():
        lines.append(f"{_printable(str(name)):{width}}  ", style="bold").append_text(_text(_record_cell(name, value)))
        lines.append("\n")
    lines.rstrip()
    return lines


def _render_tasks(records: list[dict[str, Any]]) -> Table:
    table = Table("id", "type", "key", "state", "pid", "exit/signal", "started", "ended", **_TABLE_STYLE)
    for r in records:
        cells = (r.get("id"), r.get("type"), r.get("key"), r.get("state"), r.get("pid"), _exit_or_signal(r))
        table.add_row(*map(_text, cells), _text(_when(r.get("started_at"))), _text(_when(r.get("ended_at"))))
    return table


def _render_result(result: Any) -> Text:
    return _text(result if isinstance(result, str) else json.dumps(result, indent=2, ensure_ascii=False))


def _show(ctx: typer.Context, result: Any, render: Callable[[Any], Any]) -> None:
    """Print a result: exact JSON with --json, else ``render(result)``."""
    if ctx.obj.json:
        typer.echo(json.dumps(result, ensure_ascii=False))
    elif result is not None:
        _console().print(render(result))


def _json_types(schema: Any, root: dict[str, Any], depth: int = 0) -> list[str]:
    """The JSON types a property schema allows, in order, "null" last.

    Follows local ``$ref``s and ``anyOf``/``oneOf``/``allOf`` (what pydantic
    emits for ``int | None``, enums and nested models); ``[]`` means any.
    """
    if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
        return []
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _json_types(root.get("$defs", {}).get(ref.removeprefix("#/$defs/")), root, depth + 1)
    declared = schema.get("type")
    types = [declared] if isinstance(declared, str) else [t for t in declared or [] if isinstance(t, str)]
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key) or []:
            types += _json_types(sub, root, depth + 1)
    if not types:
        values = schema.get("enum", [schema["const"]] if "const" in schema else [])
        types = [_json_type_of(v) for v in values]
    unique = list(dict.fromkeys(types))
    return sorted(unique, key=lambda t: t == "null")


def _json_type_of(value: Any) -> str:
    if value is None:
        return "null"
    for python_type, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string")):
        if isinstance(value, python_type):
            return name
    return "array" if isinstance(value, list) else "object"


def _params_label(schema: Any) -> str:
    """``name:type`` for each parameter, ``?`` marking the optional ones, ``...`` any other."""
    if not isinstance(schema, dict):
        return "-"
    properties = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
    required = set(schema.get("required") or [])
    labels = []
    for name, prop in properties.items():
        types = "|".join(_SHORT_TYPES.get(t, t) for t in _json_types(prop, schema)) or "any"
        labels.append(f"{name}{'' if name in required else '?'}:{types}")
    if schema.get("additionalProperties") is True:
        labels.append("...")  # takes any other name too (an action with **params)
    return ", ".join(labels) or "-"


def _render_schemas(kind: str, entries: Iterable[dict[str, Any]]) -> Table:
    """Actions or task types: name, parameters, the doc's first line."""
    table = Table(kind, "params", "description", **_TABLE_STYLE)
    for entry in entries:
        doc = str(entry.get("doc") or "").strip().split("\n", 1)[0]
        table.add_row(_text(entry.get("name")), _text(_params_label(entry.get("params"))), _text(doc))
    return table


#: What each JSON type expects on the command line, and an example of it.
_EXPECTED = {
    "integer": ("an integer", "42"),
    "number": ("a finite number", "1.5"),
    "boolean": ("a boolean (true/false, 1/0, yes/no)", "true"),
    "array": ("a JSON array", "[1,2]"),
    "object": ("a JSON object", '{"a":1}'),
    "null": ("null", "null"),
    "string": ("a string", "text"),
}
#: Which type wins when a schema allows several (``int | str``: "5" is 5): this order.
_PREFERENCE = tuple(_EXPECTED)


def _parse_as(json_type: str, text: str) -> Any:
    """``text`` read as a value of ``json_type``; ValueError if it does not fit."""
    if json_type == "integer" and _INTEGER.match(text):
        return int(text)
    if json_type == "number" and math.isfinite(number := float(text)):  # JSON has no NaN/Infinity
        return number
    if json_type == "boolean" and text.lower() in _BOOLEANS:
        return _BOOLEANS[text.lower()]
    if json_type in ("array", "object"):
        value = json.loads(text)
        if isinstance(value, list if json_type == "array" else dict):
            return value
    if json_type == "string" or (json_type == "null" and text == "null"):
        return None if json_type == "null" else text
    raise ValueError(f"{text!r} is not {json_type}")


def _coerce(name: str, text: str, types: list[str], where: str) -> Any:
    known = sorted((t for t in types if t in _EXPECTED), key=_PREFERENCE.index)
    for json_type in known:
        try:
            return _parse_as(json_type, text)
        except ValueError:
            continue
    if not known:
        return text  # no type declared (or an unknown one): the daemon validates
    expected = " or ".join(_EXPECTED[t][0] for t in known)
    example = _EXPECTED[known[0]][1]
    raise _UsageError(
        f"parameter {name!r} of {where} expects {expected}, got {text!r}; "
        f"write {name}={example}, or {name}:=JSON for a raw JSON value"
    )


def _parse_assignments(args: Sequence[str]) -> dict[str, tuple[str, bool]]:
    """``name=value`` / ``name:=JSON`` arguments as ``{name: (text, is_json)}``."""
    parsed: dict[str, tuple[str, bool]] = {}
    for arg in args:
        name, sep, text = arg.partition("=")
        is_json = name.endswith(":")
        name = name.removesuffix(":")
        if not sep or not name:
            raise _UsageError(f"expected name=value or name:=JSON, got {arg!r}")
        if name in parsed:
            raise _UsageError(f"parameter {name!r} given twice; give each parameter once")
        parsed[name] = (text, is_json)
    return parsed


def _build_params(args: Sequence[str], schema_of: Callable[[], Any], where: str) -> dict[str, Any]:
    """The typed parameters of ``args``, read by the schema ``schema_of()`` fetches.

    The schema is fetched only when some value needs typing; a caller not
    allowed to list schemas sends strings and lets the daemon validate.
    """
    assignments = _parse_assignments(args)
    try:
        schema = schema_of() if any(not is_json for _, is_json in assignments.values()) else None
    except Forbidden:
        schema = None
    root = schema if isinstance(schema, dict) else {}
    properties: dict[str, Any] = root["properties"] if isinstance(root.get("properties"), dict) else {}
    params: dict[str, Any] = {}
    for name, (text, is_json) in assignments.items():
        if is_json:
            try:
                params[name] = json.loads(text)
            except ValueError as exc:
                raise _UsageError(f"parameter {name!r}: {text!r} is not JSON ({exc})") from None
        elif name in properties:
            params[name] = _coerce(name, text, _json_types(properties[name], root), where)
        else:
            params[name] = text  # unknown name: the daemon rejects it with the names it knows
    return params


def _find_schema(entries: Any, name: str, actions_of: str | None = None) -> Any:
    """The ``params`` schema of the entry called ``name`` (in ``actions_of``'s actions)."""
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        if actions_of is not None and entry.get("name") == actions_of:
            return _find_schema(entry.get("actions"), name)
        if actions_of is None and entry.get("name") == name:
            return entry.get("params")
    return None


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


def _run(ctx: typer.Context, request: Callable[[Client], Any], render: Callable[[Any], Any]) -> None:
    """Send one request in a ``_session`` and print its result."""
    with _session(ctx) as client:
        result = request(client)
    _show(ctx, result, render)


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


@app.command()
def serve(
    config: Annotated[
        Path, typer.Option("--config", exists=True, dir_okay=False, metavar="FILE", help="The daemon's TOML config.")
    ],
    log_level: Annotated[
        str | None, typer.Option("--log-level", metavar="LEVEL", help="debug, info, warning or error.")
    ] = None,
) -> None:
    """Run the daemon in the foreground (systemd, containers, development)."""
    try:
        from pymgr.daemon import serve as serve_daemon
    except ModuleNotFoundError as exc:
        if exc.name != "pymgr.daemon":
            raise
        typer.echo("error: unavailable: this pymgr has no daemon (pymgr.daemon is missing)", err=True)
        raise typer.Exit(EXIT_ERROR) from None
    raise typer.Exit(serve_daemon(config, log_level))


@app.command()
def health(ctx: typer.Context) -> None:
    """Show the daemon's status, version, pid and uptime."""
    _run(ctx, Client.health, _render_record)


def _render_modules(modules: list[dict[str, Any]]) -> Table:
    rows = []
    for module in modules:
        for act in module.get("actions") or []:
            suffix = " (read-only)" if act.get("read_only") else ""
            rows.append({**act, "name": f"{module.get('name')}.{act.get('name')}{suffix}"})
    return _render_schemas("action", rows)


@app.command()
def modules(ctx: typer.Context) -> None:
    """List every module.action with its parameters (? marks optional ones)."""
    _run(ctx, Client.modules, _render_modules)


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
        schema = lambda: _find_schema(client.modules(), action, actions_of=module)  # noqa: E731
        return client.call(module, action, _build_params(params or [], schema, f"{module}.{action}"))

    _run(ctx, request, _render_result)


@tasks_app.command("list")
def tasks_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option("--state", help="queued, running, succeeded, failed, ...")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only tasks of this type.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Only tasks with this key.")] = None,
) -> None:
    """List task runs, newest first."""
    _run(ctx, lambda client: client.tasks(state=state, type=type_, key=key), _render_tasks)


@tasks_app.command("show")
def tasks_show(ctx: typer.Context, task_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Show one task run's full record."""
    _run(ctx, lambda client: client.task(task_id), _render_record)


@tasks_app.command("start")
def tasks_start(
    ctx: typer.Context,
    task_type: Annotated[str, typer.Argument(metavar="TYPE", help="The task type (see `pymgr tasks types`).")],
    params: Annotated[
        list[str] | None,
        typer.Argument(metavar="NAME=VALUE|NAME:=JSON...", help="Parameters, typed by the task type's schema."),
    ] = None,
    key: Annotated[str | None, typer.Option("--key", help="Idempotency key, e.g. scan:1.")] = None,
) -> None:
    """Start a task run; prints its record at once."""

    def request(client: Client) -> Any:
        schema = lambda: _find_schema(client.task_types(), task_type)  # noqa: E731
        return client.start_task(task_type, _build_params(params or [], schema, f"task type {task_type}"), key=key)

    _run(ctx, request, _render_record)


@tasks_app.command("stop")
def tasks_stop(ctx: typer.Context, task_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Stop a task run (its whole process tree); prints its record."""
    _run(ctx, lambda client: client.stop_task(task_id), _render_record)


@tasks_app.command("types")
def tasks_types(ctx: typer.Context) -> None:
    """List the task types a client may start."""
    _run(ctx, Client.task_types, lambda types: _render_schemas("type", types))


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run the command line and return its exit code."""
    try:
        app(args=argv, prog_name="pymgr")
    except SystemExit as exc:  # click ends every run this way
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0
