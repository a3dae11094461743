"""The daemon side's objects, made and joined in one place (read top to bottom: each gets what it needs).

Rules:
- Every object is handed the ones it uses at construction; none reaches
  into another's fields. The store calls nobody; the keeper link calls
  ``Supervision`` (its messages, their batch, its loss).
- What depends on the manager's state (the task types in force, whether
  it shuts down, its background tasks) is passed in as small functions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pymgr.config import TasksConfig
from pymgr.keeper.cgroup import CgroupTree
from pymgr.metrics import Metrics
from pymgr.tasks.events import EventHub
from pymgr.tasks.intake import Intake
from pymgr.tasks.keeperlink import KeeperLink
from pymgr.tasks.logreader import LogReader
from pymgr.tasks.runqueue import RunQueue
from pymgr.tasks.runtable import RunTable
from pymgr.tasks.spawnqueue import SpawnPump
from pymgr.tasks.store import TaskStore
from pymgr.tasks.supervision import Supervision
from pymgr.tasks.transitions import Transitions


@dataclass(frozen=True, slots=True)
class Hooks:
    """What the engine asks of the manager."""

    #: A type's ``max_concurrent`` now (None: no limit, or no such type).
    limit: Callable[[str], int | None]
    #: Spawn requests may leave (the keeper is synced, no shutdown under way).
    ready: Callable[[], bool]
    #: A run's deadline passed.
    deadline_passed: Callable[[int], None]
    #: The config in force (``reload`` replaces it).
    config: Callable[[], TasksConfig]
    #: Run a coroutine in the background, until the manager closes.
    spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]


@dataclass(frozen=True, slots=True)
class Engine:
    """The objects of the daemon side (see ``manager.py`` for what each does)."""

    store: TaskStore
    events: EventHub
    logs: LogReader
    queue: RunQueue
    table: RunTable
    link: KeeperLink
    transitions: Transitions
    spawns: SpawnPump
    supervision: Supervision
    intake: Intake


def build_engine(
    config: TasksConfig,
    state_dir: Path,
    store: TaskStore,
    cgroups: CgroupTree | None,
    clock: Callable[[], datetime],
    metrics: Metrics | None,
    hooks: Hooks,
) -> Engine:
    """Make and join the objects of the daemon side for ``state_dir``."""
    log_dir = state_dir / "logs"
    events = EventHub(config.events_queue_size, config.events_history)
    logs = LogReader(log_dir)
    queue = RunQueue(hooks.limit)
    table = RunTable(store, queue, clock, on_deadline=hooks.deadline_passed)
    link, transitions, spawns, supervision = _keeper_side(
        config, state_dir, store, events, queue, table, cgroups, clock, metrics, hooks
    )
    link.listen(
        supervision.on_message, supervision.on_lost, supervision.read_batch, supervision.on_unreadable
    )
    intake = Intake(
        store=store, table=table, queue=queue, pump=spawns, transitions=transitions, logs=logs, clock=clock
    )
    return Engine(store, events, logs, queue, table, link, transitions, spawns, supervision, intake)


def _keeper_side(
    config: TasksConfig,
    state_dir: Path,
    store: TaskStore,
    events: EventHub,
    queue: RunQueue,
    table: RunTable,
    cgroups: CgroupTree | None,
    clock: Callable[[], datetime],
    metrics: Metrics | None,
    hooks: Hooks,
) -> tuple[KeeperLink, Transitions, SpawnPump, Supervision]:
    """The keeper link and the objects that speak over it."""
    log_dir = state_dir / "logs"
    link = KeeperLink(state_dir, **_link_settings(config))
    transitions = Transitions(
        store=store,
        table=table,
        queue=queue,
        link=link,
        events=events,
        metrics=metrics,
        clock=clock,
        log_dir=log_dir,
    )
    spawns = SpawnPump(
        queue=queue,
        table=table,
        link=link,
        transitions=transitions,
        clock=clock,
        ready=hooks.ready,
        log_dir=log_dir,
        cgroups=cgroups,
    )
    supervision = Supervision(
        store=store,
        table=table,
        queue=queue,
        pump=spawns,
        link=link,
        transitions=transitions,
        events=events,
        clock=clock,
        log_dir=log_dir,
        cgroups=cgroups,
        start_timeout_s=lambda: hooks.config().keeper_start_timeout_s,
        spawn=hooks.spawn,
    )
    return link, transitions, spawns, supervision


def _link_settings(config: TasksConfig) -> dict[str, Any]:
    return {
        "idle_exit_s": config.keeper_idle_exit_s,
        "start_timeout_s": config.keeper_start_timeout_s,
        "log_max_bytes": config.keeper_log_max_bytes,
    }
