"""The daemon's configuration: pydantic models that hold data only.

Adding a setting means adding one field here (with its default and its
reason); nothing else parses the file. Relative paths in a config file are
made absolute against the directory of that file, so a daemon started from any
working directory (systemd starts it in /) reads the same paths. They are
joined, never resolved: resolving would follow a link planted on the way
before ``O_NOFOLLOW`` or a trust check could see it. The file itself must
be one only root or the daemon's user can change (``_configtrust``).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pymgr._configtrust import check_config
from pymgr._fsguard import absolute as _absolute
from pymgr.auth.audit import refused_path_beside
from pymgr.auth.policy import PolicyConfig
from pymgr.auth.settings import AuditConfig, AuthConfig, LimitsConfig, TlsConfig
from pymgr.core.paramspec import ParamSpec
from pymgr.modules.commandspec import CommandConfig


def _octal_mode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value, 8)
        except ValueError:
            raise ValueError(f"must be an octal mode such as \"0660\", not {value!r}") from None
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpConfig(_Section):
    """The native HTTP/JSON API."""

    #: Unix socket path; empty string turns the Unix listener off.
    unix_socket: Path | None = Path("/run/pymgr/pymgr.sock")
    #: Start even though socket_mode lets every local user connect (o+w).
    #: (Declared before socket_mode: its check reads this.)
    allow_world_writable: bool = False
    #: File mode of the socket (octal); 0660 lets only the owner and the group connect.
    socket_mode: Annotated[int, BeforeValidator(_octal_mode), Field(ge=0, le=0o777)] = 0o660
    #: Group that owns the socket (name); none keeps the daemon's group.
    socket_group: str | None = None
    #: false: a socket_group that does not exist (or may not be set by this
    #: user) is a warning and the daemon's group stays; true: a start-up error.
    socket_group_required: bool = True
    #: Optional TCP listener, "host:port" (port 0 picks a free one).
    tcp: str | None = None
    #: Largest request body accepted (bytes); more gets 413.
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    #: Longest request target (path and query), in bytes; more gets 413.
    max_request_line_bytes: int = Field(8 * 1024, ge=64)
    #: Largest request head (request line and headers), in bytes; more gets 413.
    #: h11 allows 16 KiB; httptools has no limit of its own.
    max_header_bytes: int = Field(16 * 1024, ge=256)
    #: Seconds from connect (or the first byte of a request) until its head is complete; then 408 and close.
    header_timeout_s: float = Field(10.0, gt=0)
    #: Seconds from a complete head until the whole body has arrived; then 408 and close.
    body_timeout_s: float = Field(30.0, gt=0)
    #: Seconds a client may leave its replies unread (the connection's send buffer full) before
    #: the connection is aborted: a client that never reads must not hold a slot forever.
    send_timeout_s: float = Field(30.0, gt=0)
    #: Open connections per listener; more are answered 503 and closed.
    max_connections: int = Field(1000, ge=1)
    #: Open connections per identity (uid on the Unix socket, client address
    #: or certificate on TCP); more are answered 429 and closed.
    max_connections_per_identity: int = Field(200, ge=1)
    #: File descriptors kept out of every connection cap, for the daemon's own files (task store, logs,
    #: audit log, keeper link, running commands' pipes) and its listening sockets. Start-up refuses caps
    #: whose sum (max_connections per HTTP listener, [legacy] max_connections) plus this passes RLIMIT_NOFILE.
    reserved_fds: int = Field(256, ge=32)
    #: TLS on the TCP listener; none serves plain HTTP (signed requests still required).
    tls: TlsConfig | None = None
    #: Seconds an idle keep-alive connection stays open.
    keepalive_timeout_s: float = Field(5.0, gt=0)
    #: Seconds to finish in-flight requests on shutdown before cancelling them.
    shutdown_timeout_s: float = Field(10.0, ge=0)

    @field_validator("socket_mode")
    @classmethod
    def _not_world_writable(cls, value: int, info: ValidationInfo) -> int:
        unix = info.data.get("unix_socket") is not None  # "" (off) is None by now
        if unix and value & 0o002 and not info.data.get("allow_world_writable", False):
            raise ValueError(
                f'"{value:04o}" lets every local user write to the socket and call pymgr; use "0660" '
                "with socket_group, or set allow_world_writable = true in [http] to accept that"
            )
        return value

    @field_validator("tcp")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"must be \"host:port\" with a port 0-65535, not {value!r}")
        return value


class LegacyConfig(_Section):
    """The 2014 design's `key:value` line protocol (opt-in)."""

    enabled: bool = False
    #: Loopback by default: this signature is static and replayable.
    host: str = "127.0.0.1"
    port: int = Field(6667, ge=0, le=65535)
    #: Shared secret of the HMAC-MD5 module-name signature.
    secret: SecretStr | None = None
    #: Longest accepted request line, in bytes (h11 uses 16 KiB for a whole head).
    max_line_bytes: int = Field(4096, ge=16)
    #: Most `key:value` lines in one request.
    max_lines: int = Field(64, ge=3)
    #: Seconds from connect until the request must be complete.
    read_timeout_s: float = Field(10.0, gt=0)
    #: Open connections at once; more get err_code 8 and are closed.
    max_connections: int = Field(100, ge=1)
    #: Open connections from one client address; more get err_code 7 and are closed.
    max_connections_per_peer: int = Field(20, ge=1)


#: One resource limit: a number sets soft and hard, [soft, hard] sets both (soft <= hard).
Rlimit = Annotated[int, Field(ge=0)] | tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]


class RlimitsConfig(_Section):
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


class TaskTypeConfig(_Section):
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
                f"restart_delay_max_s ({self.restart_delay_max_s}) must be >= restart_delay_s ({self.restart_delay_s})"
            )
        return self


class CgroupConfig(_Section):
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


class TasksConfig(_Section):
    """Background tasks."""

    #: Seconds between SIGTERM and SIGKILL when a task is stopped.
    stop_grace_s: float = Field(5.0, ge=0)
    #: Most runs queued or running at once, all callers together; a start past it is refused (409, "conflict").
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
    #: Records a page of tasks.list (GET /v1/tasks) holds when the caller names no limit. A page costs the
    #: daemon 40-65 µs of CPU a record on the 2-core bench machine (docs/performance.md, "Task engine at
    #: scale"): 20 keep the p99 within 10 ms unless the host is busy. Mastodon's default page is 20.
    list_limit: int = Field(20, ge=1)
    #: Most records one page may hold: a page is built on the event loop, so this bounds how long one list
    #: call holds every other request up (20-30 ms for 500 on the bench machine) and its reply (~300 KB).
    list_max_limit: int = Field(500, ge=1)
    #: Default size of one run's log file before rotation (bytes); 10 MiB.
    log_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    #: Default number of rotated log files kept per run (besides the current one).
    log_keep: int = Field(3, ge=1)
    #: Seconds between two heartbeats on GET /v1/events.
    events_heartbeat_s: float = Field(15.0, gt=0)
    #: Events buffered per /v1/events subscriber; a slower one loses the oldest and gets a "gap" event.
    events_queue_size: int = Field(1000, ge=1)
    #: Seconds between two reads of a followed log (logs?follow=true) looking for new output.
    log_follow_poll_s: float = Field(0.1, gt=0)
    #: Seconds between two writes of the runs' latest progress to the store (events carry each update at once).
    progress_flush_s: float = Field(1.0, gt=0)
    #: Seconds the keeper process lingers with no run and no daemon connected, then exits.
    keeper_idle_exit_s: float = Field(30.0, ge=0)
    #: Seconds the daemon waits for a keeper it started to accept connections.
    keeper_start_timeout_s: float = Field(10.0, gt=0)
    #: Bytes of <state_dir>/run/keeper.log past which a new keeper starts a new file (the old one becomes keeper.log.1).
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


class ModulesConfig(_Section):
    """Which modules the daemon serves."""

    #: Entry-point names (group `pymgr.modules`), "package.file:Class" or
    #: "package.file" (its @register-ed classes).
    enabled: list[str] = Field(default_factory=lambda: ["tasks"])
    #: Per-module settings, by module name.
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)


class ServiceConfig(_Section):
    """How pymgr runs as a system service: systemd units, `pymgr daemon`, Windows (docs/install.md)."""

    #: Sandboxing of the generated systemd unit: "strict", "relaxed" or "off" (docs/install.md lists each option).
    hardening: Literal["strict", "relaxed", "off"] = "strict"
    #: [Service] directives that replace the hardening level's value, e.g. {ProtectSystem = "full"}; "" drops one.
    overrides: dict[Annotated[str, Field(pattern=r"^[A-Z][A-Za-z]+$")], Annotated[str, Field(pattern=r"^[^\n\r]*$")]] = (
        Field(default_factory=dict)
    )
    #: Extra paths the daemon and its tasks may write under ProtectSystem=strict (state_dir is always writable).
    read_write_paths: list[Path] = Field(default_factory=list)
    #: systemd WatchdogSec: the event loop must answer within this many seconds or systemd restarts
    #: the daemon; 0 turns the watchdog off. Below 2 s a busy host would see false alarms.
    watchdog_s: int = Field(30, ge=0, le=3600)
    #: systemd RestartSec: seconds between a failure and the restart.
    restart_delay_s: int = Field(2, ge=0, le=3600)
    #: `pymgr daemon`: the pidfile, locked for the daemon's life (--pidfile overrides).
    pidfile: Path = Path("/run/pymgr/pymgr.pid")
    #: `pymgr daemon` and the Windows service: the log file; <state_dir>/pymgr.log if unset.
    log_file: Path | None = None
    #: `pymgr daemon start`: seconds to wait for the daemon to be ready.
    start_timeout_s: float = Field(30.0, gt=0)
    #: `pymgr daemon stop`: seconds to wait after SIGTERM (in-flight requests and task stops need time).
    stop_timeout_s: float = Field(60.0, gt=0)

    @field_validator("watchdog_s")
    @classmethod
    def _watchdog_floor(cls, value: int) -> int:
        if 0 < value < 2:
            raise ValueError(f"must be 0 (off) or at least 2 seconds, not {value}")
        return value


class SecurityConfig(_Section):
    """What the config says about itself."""

    #: The secrets written in this file are public (the demo's): accept them in a file
    #: others may read, and say so at every start. False: such a file must be mode 0600.
    public_secrets: bool = False


class Config(_Section):
    """The whole configuration file."""

    #: Where the daemon keeps its state: task logs, records.
    state_dir: Path = Path("/var/lib/pymgr")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    http: HttpConfig = Field(default_factory=HttpConfig)
    legacy: LegacyConfig = Field(default_factory=LegacyConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    modules: ModulesConfig = Field(default_factory=ModulesConfig)
    #: HMAC keys of signed TCP requests (docs/security.md).
    auth: AuthConfig = Field(default_factory=AuthConfig)
    #: Who may call what; deny by default (docs/security.md).
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    #: The audit log of every privileged request.
    audit: AuditConfig = Field(default_factory=AuditConfig)
    #: Per-identity rate and params size, for every transport.
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    #: Commands served as actions, by name (docs/security.md, "Commands").
    commands: dict[str, CommandConfig] = Field(default_factory=dict)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)

    def resolve_paths(self, base: Path) -> Config:
        """A copy with every relative path made absolute against ``base``."""

        def absolute(p: Path | None) -> Path | None:
            return None if p is None else _absolute(base / p)

        tls = self.http.tls
        if tls is not None:
            tls = tls.model_copy(
                update={"certfile": absolute(tls.certfile), "keyfile": absolute(tls.keyfile), "client_ca": absolute(tls.client_ca)}
            )
        http = self.http.model_copy(update={"unix_socket": absolute(self.http.unix_socket), "tls": tls})
        keys = [k.model_copy(update={"secret_file": absolute(k.secret_file)}) for k in self.auth.keys]
        state_dir = absolute(self.state_dir)
        audit_path = absolute(self.audit.path) or state_dir / "audit.log"  # type: ignore[operator]
        refused_path = absolute(self.audit.refused_path) or refused_path_beside(audit_path)
        types = {
            name: t.model_copy(update={"cwd": absolute(t.cwd) if t.cwd else base})
            for name, t in self.tasks.types.items()
        }
        return self.model_copy(
            update={
                "state_dir": state_dir,
                "http": http,
                "auth": self.auth.model_copy(update={"keys": keys}),
                "audit": self.audit.model_copy(update={"path": audit_path, "refused_path": refused_path}),
                "commands": {
                    name: c.model_copy(update={"cwd": absolute(c.cwd)}) for name, c in self.commands.items()
                },
                "tasks": self.tasks.model_copy(update={"types": types}),
                "service": self.service.model_copy(
                    update={
                        "pidfile": absolute(self.service.pidfile),
                        "log_file": absolute(self.service.log_file),
                        "read_write_paths": [absolute(p) for p in self.service.read_write_paths],
                    }
                ),
            }
        )


class ConfigError(Exception):
    """The config file cannot be read or does not validate."""


def _line_of(text: str, loc: tuple[Any, ...], value: Any) -> int | None:
    """Best guess at the line of a bad value: where the string value, else the key, first appears."""
    lines = text.splitlines()
    if isinstance(value, str) and value:
        for quoted in (f'"{value}"', f"'{value}'"):
            for number, line in enumerate(lines, start=1):
                if quoted in line:
                    return number
    keys = [part for part in loc if isinstance(part, str)]
    if keys:
        pattern = re.compile(rf"^\s*{re.escape(keys[-1])}\s*=")
        for number, line in enumerate(lines, start=1):
            if pattern.match(line):
                return number
    return None


def load_config(path: Path) -> Config:
    """Read, validate and resolve a TOML config file.

    Raises:
        ConfigError: naming the file and every bad key.
    """
    try:
        with open(path, "rb") as file:
            st = os.fstat(file.fileno())
            text = file.read().decode("utf-8")
        raw = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    if raw.get("http", {}).get("unix_socket") == "":
        raw["http"]["unix_socket"] = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        lines = [f"config {path} is invalid:"]
        for err in exc.errors(include_url=False):
            line = _line_of(text, err["loc"], err.get("input"))
            where = f" (line {line})" if line else ""
            lines.append(f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}{where}")
        raise ConfigError("\n".join(lines)) from None
    try:
        check_config(path, st, config)
    except OSError as exc:
        raise ConfigError(f"config refused: {exc.strerror or exc}") from None
    # The file's own directory, links resolved: check_config has just checked every link and
    # directory on the way to it, so nobody else can change where this points.
    return config.resolve_paths(path.resolve().parent)
