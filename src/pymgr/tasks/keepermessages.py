"""The requests the daemon sends the keeper, built from a run's record and the settings it started with.

Rules:
- A spawn request carries everything the keeper needs to start the run
  alone (argv, pins, environment with the run's marker, user, limits,
  log settings, cgroup); the keeper never reads the daemon's config.
- An adopt request names the leader by pid *and* start time on this boot:
  the keeper adopts nothing because of what a process's environment says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pymgr.keeper.cgroup import CgroupTree
from pymgr.keeper.proctree import ProcRef, run_marker
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.tasktypes import TaskType


def spawn_request(
    record: TaskRecord, task_type: TaskType, log_dir: Path, cgroups: CgroupTree | None
) -> dict[str, Any]:
    """Start the run of ``record`` (queued) as ``task_type`` says."""
    cgroup = None
    if cgroups is not None:
        cgroup = {"path": cgroups.run(record.id).path, "limits": dict(task_type.cgroup_limits)}
    return {
        "op": "spawn",
        "id": record.id,
        "argv": record.argv,
        "pins": task_type.spawn_pins(record.params, record.argv),
        "env": {**task_type.env, **run_marker(record.id, record.marker)},
        "cwd": None if task_type.cwd is None else str(task_type.cwd),
        "user": task_type.user,
        "group": task_type.group,
        "rlimits": {name: list(limits) for name, limits in task_type.rlimits.items()},
        "marker": record.marker,
        "log": task_type.log_settings(log_dir),
        "leftovers_grace_s": task_type.stop_grace_s if task_type.kill_leftovers else None,
        "cgroup": cgroup,
    }


def adopt_request(
    record: TaskRecord, leader: ProcRef, task_type: TaskType, log_dir: Path, output: dict[str, int] | None
) -> dict[str, Any]:
    """Supervise the running run of ``record`` again, its leader being ``leader``."""
    return {
        "op": "adopt",
        "id": record.id,
        "pid": leader.pid,
        "start_time": leader.start_time,
        "boot_id": record.boot_id,
        "marker": record.marker,
        "cgroup": record.cgroup,
        "started_at": record.started_at.timestamp() if record.started_at else None,
        "output": output,
        "log": task_type.log_settings(log_dir),
    }


def kill_request(task_id: int, grace_s: float) -> dict[str, Any]:
    """Stop the run's process tree: SIGTERM, then SIGKILL after ``grace_s``."""
    return {"op": "kill", "id": task_id, "grace_s": grace_s}


def ack(task_id: int) -> dict[str, Any]:
    """The run's exit is recorded: the keeper may forget it."""
    return {"op": "ack", "id": task_id}


def resend_request() -> dict[str, Any]:
    """Send again every status not acknowledged (a write of the daemon failed)."""
    return {"op": "resend"}


def exit_when_idle() -> dict[str, Any]:
    """Exit once no run is left (the daemon stops its runs on its way out)."""
    return {"op": "exit_when_idle"}
