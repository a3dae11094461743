"""The daemon's choice of containment for runs and commands, from ``[tasks.cgroup]``.

Rules:
- "auto" (the default) uses a cgroup tree where one can be made
  (``_cgroup.open_tree``) and otherwise logs one warning and goes on with
  the older method (session, process group, marker): each run's record
  then says ``cgroup: null``, meaning leftovers that left its session and
  dropped its marker were not looked for. "required" refuses to start
  without a tree; "off" never makes one.
- A task type with ``memory_max``, ``pids_max`` or ``cpu_max`` needs the
  tree and its controllers: without them the daemon refuses to start (and a
  reload is refused), naming the type, the controller and what is available.
  A limit is never silently dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from pymgr.config import CgroupConfig, ConfigError
from pymgr.keeper import cgroup as _cgroup
from pymgr.keeper.cgroup import CgroupTree
from pymgr.tasks.tasktypes import TaskType

log = logging.getLogger("pymgr.tasks")


def _controllers(types: Mapping[str, TaskType]) -> set[str]:
    return {_cgroup.CONTROLLER_OF[name] for task_type in types.values() for name in task_type.cgroup_limits}


def open_containment(
    config: CgroupConfig, state_dir: Path, types: Mapping[str, TaskType]
) -> CgroupTree | None:
    """The cgroup tree runs and commands go into, or None (the older method; see the module rules).

    Raises:
        ConfigError: "required" and no tree can be made, or a type's limit cannot be enforced.
    """
    limited = sorted(name for name, task_type in types.items() if task_type.cgroup_limits)
    if config.mode == "off":
        if limited:
            raise ConfigError(
                f'[tasks.types.{limited[0]}] sets a cgroup limit, and [tasks.cgroup] mode is "off"; '
                'remove the limit or set mode to "auto"'
            )
        return None
    try:
        return _cgroup.open_tree(
            None if config.parent is None else str(config.parent),
            config.name,
            str(state_dir),
            _controllers(types),
        )
    except _cgroup.CgroupError as exc:
        if limited:
            raise ConfigError(
                f"[tasks.types.{limited[0]}] sets a cgroup limit that cannot be enforced: {exc}"
            ) from None
        if config.mode == "required":
            raise ConfigError(f'[tasks.cgroup] mode = "required", and no cgroup can be made: {exc}') from None
        log.warning(
            "no cgroup for runs and commands (%s): stops find their processes by session, group "
            "and marker only, "
            "and a process that leaves all three survives; each run's record says cgroup: null",
            exc,
        )
        return None


def check_limits(tree: CgroupTree | None, types: Mapping[str, TaskType]) -> None:
    """Refuse types whose limits the tree in use cannot enforce (a reload cannot make a new tree).

    Raises:
        ConfigError: naming the type and why.
    """
    for name, task_type in types.items():
        if not task_type.cgroup_limits:
            continue
        if tree is None:
            raise ConfigError(
                f"[tasks.types.{name}] sets a cgroup limit, and this daemon runs without cgroups"
            )
        try:
            _cgroup.check_controllers(tree.root, {_cgroup.CONTROLLER_OF[k] for k in task_type.cgroup_limits})
        except _cgroup.CgroupError as exc:
            raise ConfigError(
                f"[tasks.types.{name}] sets a cgroup limit that cannot be enforced: {exc}"
            ) from None
