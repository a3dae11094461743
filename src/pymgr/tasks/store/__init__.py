"""Where task records live: the ``TaskStore`` interface, and ``SqliteStore``, the one the daemon uses.

The package, by concept: ``schema.py`` (the table, its version, upgrades),
``rows.py`` (a record to a row and back), ``failures.py`` (what a failed
statement becomes), ``sqlite.py`` (the store: transactions, writes, reads,
checkpoints). The manager talks to ``TaskStore`` only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TaskState
from pymgr.tasks.store.schema import SCHEMA_VERSION
from pymgr.tasks.store.sqlite import DEFAULT_BUSY_TIMEOUT_S, SqliteStore

__all__ = ["DEFAULT_BUSY_TIMEOUT_S", "SCHEMA_VERSION", "SqliteStore", "TaskStore"]


class TaskStore(Protocol):
    """What the task manager needs from a record store."""

    #: Why writes are refused, or None when the store can be written.
    read_only: str | None

    def add(self, record: TaskRecord) -> TaskRecord:
        """Store a new record under the next id ("{id}" in its log_path becomes it); returns it with it."""
        ...

    def update(self, record: TaskRecord) -> None:
        """Replace the stored record that has ``record.id``."""
        ...

    def get(self, task_id: int) -> TaskRecord | None:
        """The record with this id, or None."""
        ...

    def list_runs(
        self,
        state: TaskState | None = None,
        type: str | None = None,
        key: str | None = None,
        limit: int | None = None,
        before: int | None = None,
        started_by: str | None = None,
    ) -> list[TaskRecord]:
        """Records matching every filter given, newest first: at most ``limit``, ids below ``before``;
        ``started_by``: the person a delegate acted for (``console:alice``), else the caller's user name."""
        ...

    def count_by_state(self) -> dict[TaskState, int]:
        """How many records there are in each state (a state without any is left out)."""
        ...

    def find_active(self, key: str) -> TaskRecord | None:
        """The queued or running record with this key, or None."""
        ...

    def active(self) -> list[TaskRecord]:
        """Every queued or running record, oldest first."""
        ...

    def set_progress(self, progress: Mapping[int, tuple[float, str | None]]) -> None:
        """Record the latest progress of several runs at once."""
        ...

    def prune(self, now: datetime, by_age: bool = True) -> list[TaskRecord]:
        """Drop ended records past the retention limits; returns the dropped ones."""
        ...

    def batch(self, lazy: bool = False) -> contextlib.AbstractContextManager[None]:
        """Group the writes inside into one transaction (``lazy``: begun by the first write, if any)."""
        ...

    def set_retention(self, max_records: int, max_age_s: float | None) -> None:
        """Change the retention limits (a reload); applied by the next ``prune``."""
        ...

    def checkpoint_passive(self) -> None:
        """Copy committed pages into the main file; safe from a worker thread."""
        ...

    def checkpoint(self) -> None:
        """Make everything written so far durable in the main file (clean shutdown)."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...
