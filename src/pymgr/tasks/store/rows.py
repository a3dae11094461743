"""A ``TaskRecord`` to a row of ``runs`` and back, and the statements that write rows.

Rules:
- Columns follow ``TaskRecord``'s fields, in its order (the table's too).
- JSON columns (params, argv, who started or stopped the run) are compact
  JSON; times are epoch seconds, read back as UTC datetimes.
- ``UPDATE_SQL`` writes only what changes in a run's life: what is fixed at
  ``add`` (type, key, params, argv, who started it, attempt) is never
  rewritten (re-encoding it on every transition was half an update's cost).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Any

from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TaskState

COLUMNS = tuple(field.name for field in dataclasses.fields(TaskRecord))
_JSON_COLUMNS = frozenset({"params", "argv", "started_by", "stopped_by"})
_TIME_COLUMNS = frozenset({"created_at", "started_at", "ended_at", "not_before"})
_FIXED_COLUMNS = frozenset(
    {"id", "type", "key", "params", "argv", "started_by", "created_at", "marker", "attempt", "retry_of"}
)
_CHANGING_COLUMNS = tuple(name for name in COLUMNS if name not in _FIXED_COLUMNS)

INSERT_SQL = f"INSERT INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
UPDATE_SQL = f"UPDATE runs SET {', '.join(f'{name} = ?' for name in _CHANGING_COLUMNS)} WHERE id = ?"
#: AUTOINCREMENT's high-water mark (sqlite_sequence) and the highest id: the next id is past both.
NEXT_ID_SQL = "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'runs'), (SELECT max(id) FROM runs)"


#: One compact encoder for the JSON columns (``json.dumps`` with options builds one per call).
_to_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _json(value: Any) -> str | None:
    return None if value is None else _to_json(value)


def _time(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def insert_row(r: TaskRecord) -> tuple[Any, ...]:
    """The parameters of ``INSERT_SQL``: every column in ``COLUMNS`` order, written out (a loop over
    the columns with a check per column cost 2.4 times as much, ~20 µs more on every start)."""
    return (
        r.id,
        r.type,
        r.key,
        _to_json(r.params),
        _to_json(r.argv),
        r.state.value,
        _to_json(r.started_by),
        r.created_at.timestamp(),
        r.log_path,
        r.marker,
        r.pid,
        r.pid_start_time,
        r.exit_code,
        r.signal,
        _time(r.started_at),
        _time(r.ended_at),
        r.cancel_source,
        _json(r.stopped_by),
        r.error,
        r.attempt,
        r.retry_of,
        _time(r.not_before),
        r.boot_id,
        r.progress,
        r.progress_message,
        r.cgroup,
    )


def update_row(r: TaskRecord) -> tuple[Any, ...]:
    """The parameters of ``UPDATE_SQL``: the changing columns in ``COLUMNS`` order, then the id."""
    return (
        r.state.value,
        r.log_path,
        r.pid,
        r.pid_start_time,
        r.exit_code,
        r.signal,
        _time(r.started_at),
        _time(r.ended_at),
        r.cancel_source,
        _json(r.stopped_by),
        r.error,
        _time(r.not_before),
        r.boot_id,
        r.progress,
        r.progress_message,
        r.cgroup,
        r.id,
    )


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


def _decoder(name: str) -> Callable[[Any], Any] | None:
    """How column ``name`` of a row becomes its TaskRecord field (None: as SQLite gives it)."""
    if name in _JSON_COLUMNS:
        return json.JSONDecoder().decode
    if name in _TIME_COLUMNS:
        return _utc
    return TaskState if name == "state" else None


_DECODERS = tuple(_decoder(name) for name in COLUMNS)


def from_row(row: tuple[Any, ...]) -> TaskRecord:
    """The record of a ``SELECT *`` row: a plain tuple in column order, decoded column by column.

    A page of ``list_runs`` decodes up to ``list_max_limit`` of these on the event loop; by
    ``sqlite3.Row`` and name, with per-column checks, it cost twice as much (40 µs a record, not 20).
    """
    fields = [raw if raw is None or decode is None else decode(raw) for decode, raw in zip(_DECODERS, row)]
    return TaskRecord(*fields)
