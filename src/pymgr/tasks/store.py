"""Where task records live: a small interface, and its in-memory version.

Rules:
- The manager talks to ``TaskStore`` only, so a SQLite store can replace
  ``MemoryStore`` without touching the manager.
- The store assigns ids: increasing integers, never reused while the store lives.
- At most one active (queued or running) record per key; ``find_active``
  answers from an index, not a scan.
- At most ``max_records`` are kept: adding one more drops the oldest *ended*
  records. Active records are never dropped, so while more than
  ``max_records`` runs are active the store holds more than that.
- ``MemoryStore`` forgets everything when the daemon exits.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import ACTIVE, TaskState


class TaskStore(Protocol):
    """What the task manager needs from a record store."""

    def add(self, record: TaskRecord) -> TaskRecord:
        """Store a new record under the next id; returns it with that id."""
        ...

    def update(self, record: TaskRecord) -> None:
        """Replace the stored record that has ``record.id``."""
        ...

    def get(self, task_id: int) -> TaskRecord | None:
        """The record with this id, or None."""
        ...

    def list(self, state: TaskState | None = None, type: str | None = None, key: str | None = None) -> list[TaskRecord]:
        """Records matching every filter given, newest first."""
        ...

    def find_active(self, key: str) -> TaskRecord | None:
        """The queued or running record with this key, or None."""
        ...


class MemoryStore:
    """Records in a dict, oldest first (ids increase, dicts keep insertion order)."""

    def __init__(self, max_records: int, first_id: int = 1) -> None:
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, not {max_records}")
        self.max_records = max_records
        self._next_id = first_id
        self._records: dict[int, TaskRecord] = {}
        self._active_by_key: dict[str, int] = {}

    def add(self, record: TaskRecord) -> TaskRecord:
        record = dataclasses.replace(record, id=self._next_id)
        self._next_id += 1
        self._records[record.id] = record
        self._index(record)
        self._drop_oldest_ended()
        return record

    def update(self, record: TaskRecord) -> None:
        if record.id not in self._records:
            raise KeyError(f"no task record {record.id} to update")
        self._records[record.id] = record
        self._index(record)

    def get(self, task_id: int) -> TaskRecord | None:
        return self._records.get(task_id)

    def list(self, state: TaskState | None = None, type: str | None = None, key: str | None = None) -> list[TaskRecord]:
        return [
            r
            for r in reversed(self._records.values())
            if (state is None or r.state == state)
            and (type is None or r.type == type)
            and (key is None or r.key == key)
        ]

    def find_active(self, key: str) -> TaskRecord | None:
        task_id = self._active_by_key.get(key)
        return None if task_id is None else self._records[task_id]

    def __len__(self) -> int:
        return len(self._records)

    def _index(self, record: TaskRecord) -> None:
        if record.key is None:
            return
        if record.state in ACTIVE:
            self._active_by_key[record.key] = record.id
        elif self._active_by_key.get(record.key) == record.id:
            del self._active_by_key[record.key]

    def _drop_oldest_ended(self) -> None:
        excess = len(self._records) - self.max_records
        if excess <= 0:
            return
        doomed = []
        for record in self._records.values():
            if record.state not in ACTIVE:
                doomed.append(record.id)
                if len(doomed) == excess:
                    break
        for task_id in doomed:
            del self._records[task_id]
