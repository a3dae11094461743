"""``wait(task_id)``: what both clients decide while they watch one run's events until it ends.

Rules:
- The wait subscribes to ``GET /v1/events?task=ID``, which opens with the run's
  current state (even if it has ended), so an end before or during the
  subscription is never missed; once a ``state`` event is final, the record
  is read once more (``GET /v1/tasks/ID``), so the result is the complete record.
- A stream that ends or breaks after it opened (the daemon stopped or
  restarted) is opened again; the new one opens with the run's current state,
  so nothing in between is missed. Opening it again obeys the client's
  ``retry``: without one, a daemon that is not back at once raises
  ``ConnectionFailed``.
- ``timeout_s`` bounds the whole wait; past it, ``WaitTimeout`` names the run
  and the last state seen. Both clients keep it exactly, whatever the daemon's
  heartbeat (``[tasks] events_heartbeat_s``): the async one under
  ``asyncio.timeout``, the blocking one with reads and retries that end at
  ``deadline`` (``network.py``).
- Pure: no I/O; the clients do theirs.
"""

from __future__ import annotations

import time

from pymgr.client.replies import ConnectionFailed
from pymgr.client.results import Event, TaskRecord, TaskState
from pymgr.errors import PymgrError


class WaitTimeout(PymgrError, TimeoutError):
    """A run did not end within the ``timeout_s`` of ``wait``; ``task_id`` and ``last_state`` say which and where."""

    code = "timeout"
    http_status = 408

    def __init__(self, task_id: int, timeout_s: float, last_state: TaskState | None) -> None:
        seen = "before its state was seen" if last_state is None else f"(still {last_state})"
        super().__init__(
            f"task {task_id} did not end within {timeout_s:g} s {seen}; wait longer, or stop it",
            details={"task": task_id, "timeout_s": timeout_s, "last_state": last_state},
        )
        self.task_id = task_id
        self.last_state = last_state


class Waiting:
    """One ``wait``: its deadline and the last state seen."""

    def __init__(self, task_id: int, timeout_s: float | None) -> None:
        if timeout_s is not None and not timeout_s >= 0:
            raise ValueError(f"timeout_s must be 0 or more (or None: no limit), not {timeout_s!r}")
        self.task_id = task_id
        self.timeout_s = timeout_s
        self.last_state: TaskState | None = None
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def ended(self, event: Event) -> bool:
        """Whether ``event`` says the run has ended (it notes the run's state)."""
        record = event.record()
        if record is None or record.id != self.task_id:
            return False
        self.last_state = record.state
        return record.is_final

    @property
    def deadline(self) -> float | None:
        """The ``time.monotonic()`` at which the time is up (None: no limit)."""
        return self._deadline

    def check(self) -> None:
        """Raise ``WaitTimeout`` if the time is up."""
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise self.timeout()

    @property
    def looks_once(self) -> bool:
        """``timeout_s=0``: no wait at all; the run's record is read once (``at_once``)."""
        return self.timeout_s == 0

    def at_once(self, record: TaskRecord) -> TaskRecord:
        """The record of a run looked at once: returned if it has ended, else ``WaitTimeout``."""
        self.last_state = record.state
        if record.is_final:
            return record
        raise self.timeout()

    def timeout(self) -> WaitTimeout:
        assert self.timeout_s is not None
        return WaitTimeout(self.task_id, self.timeout_s, self.last_state)

    def broken(self, error: ConnectionFailed, opened: bool) -> None:
        """A stream failed: return to open it again, or raise (the time is up; or it never opened)."""
        self.check()
        if not opened:
            raise error
