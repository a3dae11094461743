"""Queued runs waiting for a slot of their type, released in start order (no I/O, no clock).

Rules:
- Runs leave the queue in id order, which is start order: within a type
  the oldest goes first.
- A type with ``max_concurrent`` releases a run only while fewer than that
  many of its runs are running or being spawned. A full type never holds
  up another type.
- A run with ``not_before`` (a restart's back-off) is skipped until then;
  it does not hold up younger runs of its type that are ready.
- The limit is asked for each time (``limit(type)``), so a reload that
  changes ``max_concurrent`` applies to queued runs at once.
- Time is passed in (epoch seconds): tests drive it with a fake clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable


class RunQueue:
    """See the module rules."""

    def __init__(self, limit: Callable[[str], int | None]) -> None:
        self._limit = limit
        #: id -> (type, not_before); a dict keeps insertion order.
        self._waiting: dict[int, tuple[str, float | None]] = {}
        self._busy: Counter[str] = Counter()

    def add(self, task_id: int, type: str, not_before: float | None = None) -> None:
        """Queue a run; runs leave in id order (start order), whatever order they were added in."""
        newest = next(reversed(self._waiting), None)
        self._waiting[task_id] = (type, not_before)
        if newest is not None and task_id < newest:  # a run found again at recovery: put it in its place
            self._waiting = dict(sorted(self._waiting.items()))

    def remove(self, task_id: int) -> bool:
        """Take a run out of the queue (it was stopped); True if it was there."""
        return self._waiting.pop(task_id, None) is not None

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._waiting

    def __len__(self) -> int:
        return len(self._waiting)

    def busy(self, type: str) -> int:
        """Runs of ``type`` running or being spawned."""
        return self._busy[type]

    def occupy(self, type: str) -> None:
        """A run of ``type`` holds a slot without having been queued here (found running at start-up)."""
        self._busy[type] += 1

    def release(self, type: str) -> None:
        """A run of ``type`` ended: its slot is free."""
        if self._busy[type] > 0:
            self._busy[type] -= 1

    def take_ready(self, now: float) -> list[tuple[int, str]]:
        """The runs to spawn now, oldest first; each takes a slot of its type."""
        taken = []
        full: set[str] = set()
        for task_id, (type, not_before) in list(self._waiting.items()):
            if type in full:
                continue
            limit = self._limit(type)
            if limit is not None and self._busy[type] >= limit:
                full.add(type)
                continue
            if not_before is not None and not_before > now:
                continue
            del self._waiting[task_id]
            self._busy[type] += 1
            taken.append((task_id, type))
        return taken

    def next_due(self, now: float) -> float | None:
        """The earliest future ``not_before`` of a run whose type has a free slot, or None."""
        due = [
            not_before
            for type, not_before in self._waiting.values()
            if not_before is not None
            and not_before > now
            and ((limit := self._limit(type)) is None or self._busy[type] < limit)
        ]
        return min(due, default=None)
