"""How results look for people: tables, records, escaped text (rich only here)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pymgr.cli._params import _json_types

#: Console width when stdout is not a terminal: wide enough that a table row
#: stays on one line for grep and awk (COLUMNS still wins when set).
_PIPE_WIDTH = 1000


#: Control characters (except tab and newline), DEL, C1 and bidi overrides:
#: a task key or action result must not move the cursor or reorder the line.
_UNSAFE_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


_SHORT_TYPES = dict(integer="int", number="float", boolean="bool", string="str", array="list", object="dict")


_TABLE_STYLE: dict[str, Any] = {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False}


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


#: Times for people: UTC, ISO 8601, to the second (``2024-05-01T12:00:00Z``), as the daemon's
#: records, logs and audit write them (to the millisecond): what one shows, the others find.
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_now() -> str:
    """The time now, as ``_when`` shows times."""
    return datetime.now(timezone.utc).strftime(_TIME_FORMAT)


def _when(value: Any) -> Any:
    """A timestamp (epoch seconds or ISO 8601 with a zone) in UTC ISO 8601 to the second; else as is."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, timezone.utc).strftime(_TIME_FORMAT)
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is not None:
                return moment.astimezone(timezone.utc).strftime(_TIME_FORMAT)
    except (ValueError, OverflowError, OSError):
        pass  # not a time after all: show what the daemon sent
    return value


def percent(progress: Any) -> Any:
    """A progress value (0 to 100) as ``42%`` or ``12.5%``; anything else as is."""
    if isinstance(progress, int | float) and not isinstance(progress, bool):
        return f"{progress:g}%"
    return progress


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
    if name == "progress":
        return percent(value)
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
        lines.append(f"{_printable(str(name)):{width}}  ", style="bold").append_text(
            _text(_record_cell(name, value))
        )
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


def _render_modules(modules: list[dict[str, Any]]) -> Table:
    rows = []
    for module in modules:
        for act in module.get("actions") or []:
            name = f"{module.get('name')}.{act.get('name')}{_action_marks(act)}"
            rows.append({**act, "name": name})
    return _render_schemas("action", rows)


def _action_marks(act: dict[str, Any]) -> str:
    """`` (read-only)`` or `` (dangerous)``, then `` (not allowed)`` or, for a typed task action, the
    types allowed."""
    marks = " (read-only)" if act.get("read_only") else ""
    marks += " (dangerous)" if act.get("dangerous") else ""
    if act.get("allowed") is False:
        return marks + " (not allowed)"
    types = act.get("task_types")
    allowed_types = [str(t) for t, ok in types.items() if ok] if isinstance(types, dict) else []
    return marks + (f" (types: {', '.join(allowed_types)})" if allowed_types else "")
