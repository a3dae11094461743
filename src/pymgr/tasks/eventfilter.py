"""Which runs' events a stream (``GET /v1/events?task=&type=&key=``) or a poll (``tasks.events``) wants.

Pure, no I/O.

Rules:
- Filters combine with AND; none given means every run.
- ``task`` is decided by the event alone (its ``data["id"]``). ``type``
  and ``key`` are fields of the record, which only ``state`` events carry:
  a ``progress`` event passes when its run matched. The filter learns
  which runs match from the records it is ``seed``ed with (the matching
  active runs, read right after subscribing) and from every ``state``
  event it sees; a run always has a ``state`` event (queued) before its
  first progress, so nothing is judged blind (a replay ``learn``s the runs
  of its ``state`` events before it is judged). A run's entry goes at its
  terminal ``state`` event: what is held is bounded by the active runs.
- Markers that are not about one run (``gap``) always pass.
- ``accepts`` is called by ``EventHub.publish`` and never raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymgr.tasks.events import Event
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TERMINAL

#: The event kinds that are about one run.
_RUN_KINDS = frozenset({"state", "progress"})
_TERMINAL_NAMES = frozenset(state.value for state in TERMINAL)


@dataclass(slots=True)
class EventFilter:
    """The runs one stream wants (see the module rules)."""

    task: int | None = None
    type: str | None = None
    key: str | None = None
    #: Run id -> whether it matches ``type`` and ``key``, for the runs seen and not ended.
    _runs: dict[int, bool] = field(default_factory=dict)

    @property
    def everything(self) -> bool:
        return self.task is None and self.type is None and self.key is None

    def matches(self, record: TaskRecord) -> bool:
        """Whether a run's record is one this stream wants."""
        return self._matches(record.id, record.type, record.key)

    def seed(self, records: Iterable[TaskRecord]) -> None:
        """Learn the runs active now (those that match and those that do not)."""
        for record in records:
            if record.state not in TERMINAL:
                self._runs[record.id] = self.matches(record)

    def learn(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Learn the runs of ``state`` events about to be replayed, so their earlier progress is judged."""
        for record in records:
            run_id = record.get("id")
            if isinstance(run_id, int):
                self._runs[run_id] = self._matches(run_id, record.get("type"), record.get("key"))

    def replay(self, events: Sequence[Event]) -> list[Event]:
        """The held ``events`` (oldest first) this filter accepts; a run's progress may come before
        its last ``state`` event, so every run's is learnt first."""
        self.learn(event.data for event in events if event.kind == "state")
        return [event for event in events if self.accepts(event)]

    def accepts(self, event: Event) -> bool:
        if event.kind not in _RUN_KINDS:
            return True
        run_id = event.data.get("id")
        if self.task is not None and run_id != self.task:
            return False
        if self.type is None and self.key is None:
            return True
        if event.kind == "progress":
            return self._runs.get(run_id, False) if isinstance(run_id, int) else False
        return self._state(event.data)

    def _state(self, record: Mapping[str, Any]) -> bool:
        run_id = record.get("id")
        if not isinstance(run_id, int):
            return False
        wanted = self._matches(run_id, record.get("type"), record.get("key"))
        if record.get("state") in _TERMINAL_NAMES:
            self._runs.pop(run_id, None)
        else:
            self._runs[run_id] = wanted
        return wanted

    def _matches(self, run_id: int, type_name: object, key: object) -> bool:
        return (
            (self.task is None or run_id == self.task)
            and (self.type is None or type_name == self.type)
            and (self.key is None or key == self.key)
        )
