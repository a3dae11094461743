"""The requests the daemon sends the keeper, built from a run's record and the settings it started with.

Rules:
- A spawn request carries everything the keeper needs to start the run
  alone (argv, pins, environment with the run's marker, user, limits,
  log settings, cgroup); the keeper never reads the daemon's config.
- An adopt request names the leader by pid *and* start time on this boot:
  the keeper adopts nothing because of what a process's environment says.
- Messages are the typed ones of ``pymgr.protocol.keeper``; nothing here
  builds a dict for the wire.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pymgr.keeper.cgroup import CgroupTree
from pymgr.keeper.proctree import ProcRef, run_marker
from pymgr.protocol.keeper import Adopt, CgroupRequest, HeldPipe, LogSettings, Pin, PinPath, Spawn
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.tasktypes import TaskType


def spawn_request(
    record: TaskRecord, task_type: TaskType, log_dir: Path, cgroups: CgroupTree | None
) -> Spawn:
    """Start the run of ``record`` (queued) as ``task_type`` says."""
    cgroup = None
    if cgroups is not None:
        cgroup = CgroupRequest(path=cgroups.run(record.id).path, limits=dict(task_type.cgroup_limits))
    return Spawn(
        id=record.id,
        argv=tuple(record.argv),
        pins=tuple(_pin(pin) for pin in task_type.spawn_pins(record.params, record.argv)),
        env={**task_type.env, **run_marker(record.id, record.marker)},
        cwd=None if task_type.cwd is None else str(task_type.cwd),
        user=task_type.user,
        group=task_type.group,
        rlimits=dict(task_type.rlimits),
        marker=record.marker,
        log=LogSettings(**task_type.log_settings(log_dir)),
        leftovers_grace_s=task_type.stop_grace_s if task_type.kill_leftovers else None,
        cgroup=cgroup,
    )


def _pin(pin: dict[str, Any]) -> Pin:
    parts = tuple(part if isinstance(part, str) else PinPath(**part) for part in pin["parts"])
    return Pin(index=pin["index"], parts=parts)


def adopt_request(
    record: TaskRecord, leader: ProcRef, task_type: TaskType, log_dir: Path, output: dict[str, int] | None
) -> Adopt:
    """Supervise the running run of ``record`` again, its leader being ``leader``."""
    return Adopt(
        id=record.id,
        pid=leader.pid,
        start_time=leader.start_time,
        boot_id=record.boot_id,
        marker=record.marker,
        cgroup=record.cgroup,
        started_at=record.started_at.timestamp() if record.started_at else None,
        output=None if output is None else HeldPipe(**output),
        log=LogSettings(**task_type.log_settings(log_dir)),
    )
