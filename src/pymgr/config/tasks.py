"""The ``[tasks]`` table: background tasks, their types, resource limits and cgroups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from pymgr.config.section import Section
from pymgr.core.paramspec import ParamSpec


#: One resource limit: a number sets soft and hard, [soft, hard] sets both (soft <= hard).
Rlimit = Annotated[int, Field(ge=0)] | tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]


class RlimitsConfig(Section):
    """Resource limits of a task's process (setrlimit(2)); unset ones are inherited from the keeper."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    #: Most open file descriptors (RLIMIT_NOFILE).
    nofile: Rlimit | None = None
    #: Largest address space in bytes (RLIMIT_AS); `as` in the config file.
    as_: Rlimit | None = Field(None, alias="as")
    #: CPU seconds; SIGXCPU at the soft limit, SIGKILL at the hard one (RLIMIT_CPU).
    cpu: Rlimit | None = None
    #: Most processes of the task's user (RLIMIT_NPROC).
    nproc: Rlimit | None = None

    @field_validator("nofile", "as_", "cpu", "nproc")
    @classmethod
    def _soft_at_most_hard(cls, value: Any) -> Any:
        if isinstance(value, tuple) and value[0] > value[1]:
            raise ValueError(f"soft limit {value[0]} must be <= hard limit {value[1]}")
        return value


class TaskTypeConfig(Section):
    """A kind of background task the daemon may run."""

    #: argv template: "{name}" stands for a parameter, "{python}" for the daemon's interpreter.
    argv: list[str] = Field(min_length=1)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    #: Working directory (relative to the config file); the config's directory if unset.
    cwd: Path | None = None
    #: The whole environment of the task: empty unless declared here.
    env: dict[str, str] = Field(default_factory=dict)
    #: Seconds between SIGTERM and SIGKILL on stop; the [tasks] default if unset.
    stop_grace_s: float | None = Field(None, ge=0)
    doc: str = ""
    #: Seconds a run may run; then it is stopped and ends `timed_out`. None: no limit.
    timeout_s: float | None = Field(None, gt=0)
    #: Most runs of this type running at once; more starts wait `queued`, in order. None: no limit.
    max_concurrent: int | None = Field(None, ge=1)
    #: Start a new attempt when a run ends: never, after a failure (failed, timed_out), or always.
    restart: Literal["no", "on-failure", "always"] = "no"
    #: Back-off before attempt N+1: restart_delay_s * 2**(N-1), at most restart_delay_max_s.
    restart_delay_s: float = Field(1.0, ge=0)
    restart_delay_max_s: float = Field(60.0, ge=0)
    #: Most attempts (the first run counts); None: no limit but the flapping guard.
    max_attempts: int | None = Field(None, ge=1)
    #: Flapping guard: this many restarts within flap_window_s and the type gives up.
    flap_restarts: int = Field(5, ge=1)
    flap_window_s: float = Field(60.0, gt=0)
    #: Run as this user (name or uid), with its groups; the keeper must be root. None: as the keeper.
    user: str | None = None
    #: Run with this group (name or gid); default the user's primary group.
    group: str | None = None
    #: Resource limits of the process, by name (nofile, as, cpu, nproc); a number sets soft and hard.
    rlimits: RlimitsConfig = Field(default_factory=lambda: RlimitsConfig())
    #: Size of one log file in bytes before it is rotated; the [tasks] default if unset.
    log_max_bytes: int | None = Field(None, ge=1024)
    #: Rotated log files kept besides the current one; the [tasks] default if unset.
    log_keep: int | None = Field(None, ge=1)
    #: Start each output line in the log with its UTC arrival time.
    log_timestamps: bool = False
    #: When the run's first process exits, stop what it left running (grace stop_grace_s), as a stop would.
    kill_leftovers: bool = True
    #: cgroup v2 limits of the run's cgroup (docs/tasks.md "Containment"); each needs its controller
    #: delegated to pymgr's cgroup, else the daemon refuses to start. Bytes of memory (memory.max).
    memory_max: int | None = Field(None, ge=4096)
    #: Most processes and threads of the run at once (pids.max).
    pids_max: int | None = Field(None, ge=1)
    #: CPUs the run may use, e.g. 0.5 or 2 (cpu.max over a 100 ms period).
    cpu_max: float | None = Field(None, ge=0.01)

    @model_validator(mode="after")
    def _delays_ordered(self) -> TaskTypeConfig:
        if self.restart_delay_max_s < self.restart_delay_s:
            raise ValueError(
                f"restart_delay_max_s ({self.restart_delay_max_s}) must be >= restart_delay_s "
                f"({self.restart_delay_s})"
            )
        return self


class CgroupConfig(Section):
    """Containment of runs and commands in cgroups v2 (docs/tasks.md "Containment")."""

    #: "auto": a cgroup per run and per command where a writable cgroup2 hierarchy exists (else the
    #: older method, recorded per run); "required": refuse to start without one; "off": never.
    mode: Literal["auto", "required", "off"] = "auto"
    #: The cgroup2 directory pymgr's subtree goes under; the daemon's own cgroup if unset.
    parent: Path | None = None
    #: The subtree's name under the parent: <parent>/<name>/state-<hash of state_dir>/task-<id>.
    name: str = Field("pymgr", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    @field_validator("parent")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"must be an absolute path, not {str(value)!r}")
        return value


class TasksConfig(Section):
    """Background tasks."""

    #: Seconds between SIGTERM and SIGKILL when a task is stopped.
    stop_grace_s: float = Field(5.0, ge=0)
    #: Most runs queued or running at once, all callers together; a start past it is refused (409,
    #: "conflict").
    max_active: int = Field(256, ge=1)
    #: Most runs queued or running at once that one caller started (a Unix uid, a key id, a TLS
    #: certificate; every holder of the legacy secret is one caller); a start past it is refused (409).
    max_active_per_caller: int = Field(64, ge=1)
    #: Most ids in one SCAN_MODULE start or stop (task_ids); more is refused whole (legacy err_code 4).
    scan_max_task_ids: int = Field(32, ge=1, le=1000)
    #: What a daemon shutdown does to running tasks.
    on_shutdown: Literal["stop", "leave"] = "stop"
    #: Most task records kept (in <state_dir>/tasks.db); the oldest ended ones go first, with their logs.
    max_records: int = Field(10_000, ge=1)
    #: Ended records (and logs) older than this many days are dropped; None keeps them (up to max_records).
    max_age_days: float | None = Field(30.0, gt=0)
    #: Seconds between two retention passes (max_age_days).
    prune_interval_s: float = Field(3600.0, gt=0)
    #: Records a page of tasks.list (GET /v1/tasks) holds when the caller names no limit. A page
    #: costs the daemon 40-65 µs of CPU a record on the 2-core bench machine (docs/performance.md,
    #: "Task engine at scale"): 20 keep the p99 within 10 ms unless the host is busy. Mastodon's
    #: default page is 20.
    list_limit: int = Field(20, ge=1)
    #: Most records one page may hold: a page is built on the event loop, so this bounds how long
    #: one list call holds every other request up (20-30 ms for 500 on the bench machine) and its
    #: reply (~300 KB).
    list_max_limit: int = Field(500, ge=1)
    #: Default size of one run's log file before rotation (bytes); 10 MiB.
    log_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    #: Default number of rotated log files kept per run (besides the current one).
    log_keep: int = Field(3, ge=1)
    #: Seconds between two heartbeats on GET /v1/events.
    events_heartbeat_s: float = Field(15.0, gt=0)
    #: Events buffered per /v1/events subscriber; a slower one loses the oldest and gets a "gap" event.
    events_queue_size: int = Field(1000, ge=1)
    #: Events the daemon keeps for a reconnecting /v1/events stream (Last-Event-ID) to catch up from;
    #: one that missed older ones gets a "reset" event and the current state instead.
    events_history: int = Field(1000, ge=1)
    #: Seconds between two reads of a followed log (logs?follow=true) looking for new output.
    log_follow_poll_s: float = Field(0.1, gt=0)
    #: Seconds between two writes of the runs' latest progress to the store (events carry each update at
    #: once).
    progress_flush_s: float = Field(1.0, gt=0)
    #: Seconds the keeper process lingers with no run and no daemon connected, then exits.
    keeper_idle_exit_s: float = Field(30.0, ge=0)
    #: Seconds the daemon waits for a keeper it started to accept connections.
    keeper_start_timeout_s: float = Field(10.0, gt=0)
    #: Bytes of <state_dir>/run/keeper.log past which a new keeper starts a new file (the old one becomes
    #: keeper.log.1).
    keeper_log_max_bytes: int = Field(1024 * 1024, ge=1)
    #: Seconds SQLite waits for a lock held by another connection (an operator's sqlite3 shell).
    store_busy_timeout_s: float = Field(5.0, ge=0)
    #: Seconds between two checkpoints of the store's WAL, run off the event loop (a checkpoint fsyncs).
    store_checkpoint_s: float = Field(5.0, gt=0)
    types: dict[str, TaskTypeConfig] = Field(default_factory=dict)
    #: Where runs (and commands) get their own cgroups.
    cgroup: CgroupConfig = Field(default_factory=CgroupConfig)

    @model_validator(mode="after")
    def _list_limits_ordered(self) -> TasksConfig:
        if self.list_limit > self.list_max_limit:
            limits = f"list_limit ({self.list_limit}) must be <= list_max_limit ({self.list_max_limit})"
            raise ValueError(limits)
        return self
