"""The record of one task run: what was asked, what happened.

Rules:
- A record is an immutable snapshot; a change is a new record
  (``dataclasses.replace``) handed to the store, so whatever a caller holds
  never changes under it, and a store can persist records as plain rows.
- Only the manager makes records and moves their ``state``.
- Times are timezone-aware UTC datetimes; ``to_dict`` writes them as ISO-8601.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from pymgr.tasks import shapes
from pymgr.tasks.states import TaskState

#: Who or what cancelled a run (STYLE.md "Every cancellation has a source").
#: "user" a stop request, "deadline" the type's ``timeout_s`` passed,
#: "shutdown" the daemon stopped it on its way out.
CancelSource = Literal["user", "deadline", "shutdown"]


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One run of one task type."""

    #: Increasing; 0 until the store assigns one.
    id: int
    #: The task type's name (a key of ``[tasks.types]``).
    type: str
    #: Caller's idempotency key (e.g. "scan:1"): one active run per key.
    key: str | None
    #: Validated parameters, JSON-ready, defaults filled in.
    params: dict[str, Any]
    #: The exact argv the process got (or would have got).
    argv: list[str]
    state: TaskState
    #: Identity.to_dict() of the caller who started it.
    started_by: dict[str, Any]
    created_at: datetime
    log_path: str
    #: Random token in the run's environment (PYMGR_TASK_MARKER, next to
    #: PYMGR_TASK_ID) by which its escaped descendants are recognised when
    #: it is stopped. Kept in the store only, never shown (``to_dict``
    #: leaves it out): whoever knows it can make a process look like the run's.
    marker: str
    pid: int | None = None
    #: Kernel start time of ``pid`` (/proc/PID/stat field 22, clock ticks since
    #: boot): a pid is only ours while this still matches.
    pid_start_time: int | None = None
    exit_code: int | None = None
    #: Name of the signal that ended the process, e.g. "SIGTERM".
    signal: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    cancel_source: CancelSource | None = None
    #: Identity.to_dict() of whoever asked for the stop.
    stopped_by: dict[str, Any] | None = None
    #: Why it failed or was lost, or why it was not restarted, in words
    #: (e.g. the spawn's OS error, "max 3 attempts reached").
    error: str | None = None
    #: 1 for a first run; a restart is a new run with ``attempt`` one higher,
    #: recorded (counted) before its process is spawned.
    attempt: int = 1
    #: The run this one restarts (the previous attempt), or None.
    retry_of: int | None = None
    #: A restart waits in ``queued`` until this time (its back-off delay).
    not_before: datetime | None = None
    #: /proc/sys/kernel/random/boot_id when it was spawned: after a reboot a
    #: pid and start time mean nothing.
    boot_id: str | None = None
    #: The latest ``PYMGR_PROGRESS`` line of its output: percent 0-100 and a message.
    progress: float | None = None
    progress_message: str | None = None
    #: The run's own cgroup v2 directory (docs/tasks.md "Containment"): its stop ended only once the
    #: kernel said the cgroup was empty. None: the run had none, so a descendant that left its
    #: session and dropped its marker was not looked for, and may have outlived it.
    cgroup: str | None = None

    def to_dict(self) -> shapes.TaskRecord:
        """The record as JSON-ready data (what every API, event and CLI shows): everything but the marker."""
        return {
            "id": self.id,
            "type": self.type,
            "key": self.key,
            "params": dict(self.params),
            "argv": list(self.argv),
            "state": self.state.value,
            "pid": self.pid,
            "pid_start_time": self.pid_start_time,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "created_at": self.created_at.isoformat(timespec="milliseconds"),
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "started_by": cast(shapes.Caller, dict(self.started_by)),
            "stopped_by": None if self.stopped_by is None else cast(shapes.Caller, dict(self.stopped_by)),
            "cancel_source": self.cancel_source,
            "error": self.error,
            "attempt": self.attempt,
            "retry_of": self.retry_of,
            "not_before": _iso(self.not_before),
            "progress": self.progress,
            "progress_message": self.progress_message,
            "boot_id": self.boot_id,
            "cgroup": self.cgroup,
            "log_path": self.log_path,
        }
