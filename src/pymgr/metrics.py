"""What the running daemon counts, for ``GET /metrics`` (Prometheus) and the ``metrics.snapshot`` action.

Rules:
- Counting is one dict update on the path of a request or a task's
  transition; nothing is formatted until someone asks (a scrape every few
  seconds is the usual reader).
- Every label comes from a bounded set, so a caller cannot grow the
  daemon's memory by sending new names: a request names its module and
  action only when the registry has them (else both are ``_unknown``), and
  at most ``max_series`` label sets are kept per counter; later new ones
  are counted under ``_other`` (``overflowed`` counts those updates).
- Gauges (open connections, active runs, the keeper) are read when a
  snapshot is taken, from the parts that own them (``gauge``).
- No I/O and no exposition format here: the HTTP edge renders a snapshot
  (``transport/http/metrics.py``); the legacy protocol and the CLI get the
  same snapshot as JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["MAX_SERIES", "UNKNOWN", "Metrics"]

#: Label sets kept per counter; a caller-chosen label can never make more.
MAX_SERIES = 1000
#: The module and action of a request for an action the registry does not have.
UNKNOWN = "_unknown"
#: The outcome of a call whose action raised (its wire code is "internal", as a bug's is).
ACTION_FAILED = "action_failed"
#: The label set that counts what arrives past ``max_series``.
_OTHER = "_other"

#: A gauge's reading: one value, or a value per tuple of label values.
Reading = float | Mapping[tuple[str, ...], float]


class Metrics:
    """The daemon's counters and gauges (see the module rules)."""

    def __init__(self, max_series: int = MAX_SERIES) -> None:
        if max_series < 1:
            raise ValueError(f"max_series must be >= 1, not {max_series}")
        self.max_series = max_series
        self.started_at = time.time()
        #: (transport, module, action, outcome) -> [calls, seconds].
        self._requests: dict[tuple[str, str, str, str], list[float]] = {}
        #: (task type,) -> runs spawned; (task type, end state) -> runs ended.
        self._started: dict[tuple[str], int] = {}
        self._ended: dict[tuple[str, str], int] = {}
        self._gauges: dict[str, tuple[str, tuple[str, ...], Callable[[], Reading]]] = {}
        self.overflowed = 0

    def request(self, transport: str, module: str, action: str, outcome: str, seconds: float) -> None:
        """One dispatched call ended: ``outcome`` is "ok" or the error's code."""
        key = (transport, module, action, outcome)
        entry = self._requests.get(key)
        if entry is None:
            key = self._room(self._requests, key, (transport, _OTHER, _OTHER, outcome))
            entry = self._requests.setdefault(key, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds

    def task_started(self, task_type: str) -> None:
        key = self._room(self._started, (task_type,), (_OTHER,))
        self._started[key] = self._started.get(key, 0) + 1

    def task_ended(self, task_type: str, state: str) -> None:
        key = self._room(self._ended, (task_type, state), (_OTHER, state))
        self._ended[key] = self._ended.get(key, 0) + 1

    def gauge(self, name: str, help: str, read: Callable[[], Reading], labels: tuple[str, ...] = ()) -> None:
        """Read ``read()`` at each snapshot as gauge ``name`` (replacing one of that name)."""
        self._gauges[name] = (help, labels, read)

    def snapshot(self) -> dict[str, Any]:
        """Everything, as JSON-ready data (the ``metrics.snapshot`` action's result)."""
        gauges = {}
        for name, (help, labels, read) in self._gauges.items():
            reading = read()
            values = (
                [[*key, value] for key, value in reading.items()]
                if isinstance(reading, Mapping)
                else [[reading]]
            )
            gauges[name] = {"help": help, "labels": list(labels), "values": values}
        return {
            "started_at": self.started_at,
            "requests": [[*key, int(calls), seconds] for key, (calls, seconds) in self._requests.items()],
            "tasks_started": [[*key, count] for key, count in self._started.items()],
            "tasks_ended": [[*key, count] for key, count in self._ended.items()],
            "gauges": gauges,
            "overflowed": self.overflowed,
        }

    def _room(self, table: Mapping[Any, Any], key: Any, overflow: Any) -> Any:
        """``key``, or ``overflow`` when ``table`` is full of other label sets."""
        if key in table or len(table) < self.max_series:
            return key
        self.overflowed += 1
        return overflow
