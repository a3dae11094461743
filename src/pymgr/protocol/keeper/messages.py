"""Every message of the daemon-keeper link, as a frozen dataclass (no I/O, no checks here).

Rules:
- A message is one JSON object on the wire: ``{"op": <op>, <field>: <value>, ...}``,
  its fields in the order they are declared here (``codec.encode``). Nested
  objects (``LogSettings``, ``Pin``...) are JSON objects of their fields; a
  tuple is a JSON array.
- Fields are keyword-only, so they are declared in their wire order.
- A field with a default may be absent on the wire, and then has that
  default: exactly the fields whose absence has a meaning (a spawn with no
  ``cwd``, no ``pins``; a status an earlier keeper journalled before runs had
  cgroups). Every other field must be there, of its declared type
  (``codec.decode`` says which one is not).
- Requests go from the daemon to the keeper (``REQUESTS``), news from the
  keeper to the daemon (``NEWS``); each side decodes only what it may receive.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Final, Union

#: Marks a sequence field that must hold at least one item.
NON_EMPTY: Final = "non-empty"


# -- parts of messages ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    """How the keeper writes a run's log (``TaskType.log_settings``)."""

    dir: str
    max_bytes: int
    keep: int
    timestamps: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PinPath:
    """A checked path inside an argv element: opened again beneath ``base`` right before the spawn."""

    base: str
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Pin:
    """One argv element holding checked paths: its ``parts``, joined, are ``argv[index]``."""

    index: int
    parts: tuple[str | PinPath, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CgroupRequest:
    """The run's own cgroup and the limit files to write in it (``{"memory.max": "512M"}``)."""

    path: str
    limits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldPipe:
    """Where the daemon holds a second read end of a run's output pipe (``/proc/<pid>/fd/<fd>``)."""

    pid: int
    fd: int
    inode: int


# -- requests: daemon to keeper -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Spawn:
    """Start run ``id`` (idempotent by id: a repeat is answered with the run as it is)."""

    op: ClassVar[str] = "spawn"
    id: int
    argv: Annotated[tuple[str, ...], NON_EMPTY]
    pins: tuple[Pin, ...] = ()
    env: dict[str, str]
    cwd: str | None = None
    user: str | None = None
    group: str | None = None
    #: name -> (soft, hard), names as in ``keeper.spawn.RLIMITS``.
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    marker: str = ""
    log: LogSettings
    #: Grace of the stop of what the leader leaves running when it exits; None: leave it.
    leftovers_grace_s: float | None = None
    cgroup: CgroupRequest | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Kill:
    """Stop run ``id`` and its process tree: SIGTERM, then SIGKILL after ``grace_s``."""

    op: ClassVar[str] = "kill"
    id: int
    grace_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Adopt:
    """Supervise a run an earlier keeper started, by its leader's pid and kernel start time."""

    op: ClassVar[str] = "adopt"
    id: int
    pid: int
    start_time: int
    boot_id: str | None = None
    marker: str = ""
    cgroup: str | None = None
    started_at: float | None = None
    output: HeldPipe | None = None
    log: LogSettings | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """The daemon recorded run ``id``'s end: the keeper may forget its status."""

    op: ClassVar[str] = "ack"
    id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Resend:
    """Send every unacknowledged exit status again."""

    op: ClassVar[str] = "resend"


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitWhenIdle:
    """Exit once no run is left (the daemon shuts down with ``on_shutdown = "stop"``)."""

    op: ClassVar[str] = "exit_when_idle"


# -- news: keeper to daemon ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """The first message on every connection. Its shape never changes: it says which protocol follows."""

    op: ClassVar[str] = "hello"
    protocol: int
    keeper_pid: int
    boot_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunReport:
    """A run the keeper supervises, as it is now (the body of ``live``, ``spawned`` and ``adopted``)."""

    id: int
    pid: int
    start_time: int
    boot_id: str
    started_at: float
    adopted: bool
    stopping: bool
    cgroup: str | None
    #: The keeper's read end of the run's output pipe: (fd, inode).
    output: tuple[int, int] | None
    #: The latest progress line: (percent, message).
    progress: tuple[float, str | None] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Live(RunReport):
    """A run reported on connect."""

    op: ClassVar[str] = "live"


@dataclass(frozen=True, slots=True, kw_only=True)
class Spawned(RunReport):
    """The reply to a ``spawn`` that started (or had started) the run."""

    op: ClassVar[str] = "spawned"


@dataclass(frozen=True, slots=True, kw_only=True)
class Adopted(RunReport):
    """The reply to an ``adopt`` that found the run."""

    op: ClassVar[str] = "adopted"


@dataclass(frozen=True, slots=True, kw_only=True)
class Orphan:
    """A run an earlier keeper started and journalled, whose end nobody saw and that nobody supervises."""

    op: ClassVar[str] = "orphan"
    id: int
    pid: int
    start_time: int
    boot_id: str
    started_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Exit:
    """A run's exit status, durable in the keeper's journal until acknowledged (sent at least once).

    ``pid``, ``start_time`` and ``started_at`` are None for a spawn whose
    keeper died before it noted the process (``error`` says so).
    """

    op: ClassVar[str] = "exit"
    id: int
    pid: int | None
    start_time: int | None
    boot_id: str
    started_at: float | None
    ended_at: float
    exit_code: int | None
    signal: str | None
    error: str | None
    killed: bool
    #: Absent in statuses journalled before leftovers were stopped: they were not.
    exited_on_its_own: bool = False
    #: Absent in statuses journalled before runs had cgroups.
    cgroup: str | None = None
    progress: tuple[float, str | None] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Synced:
    """Everything the keeper knows was sent: live runs, orphans and unacknowledged exits."""

    op: ClassVar[str] = "synced"


@dataclass(frozen=True, slots=True, kw_only=True)
class SpawnFailed:
    """The reply to a ``spawn`` that started nothing."""

    op: ClassVar[str] = "spawn_failed"
    id: int
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AdoptFailed:
    """The reply to an ``adopt`` whose process is gone (or is another one now)."""

    op: ClassVar[str] = "adopt_failed"
    id: int
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Gone:
    """The reply to a ``kill`` of a run the keeper does not know."""

    op: ClassVar[str] = "gone"
    id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """A run's latest progress line (coalesced: only the latest per run is sent)."""

    op: ClassVar[str] = "progress"
    id: int
    percent: float
    message: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """A request the keeper refused; it goes on serving."""

    op: ClassVar[str] = "error"
    message: str


Request = Union[Spawn, Kill, Adopt, Ack, Resend, ExitWhenIdle]
News = Union[
    Hello, Live, Spawned, Adopted, Orphan, Exit, Synced, SpawnFailed, AdoptFailed, Gone, Progress, Error
]
Message = Union[Request, News]

#: What the keeper accepts, by op, in the order its error replies list them.
REQUESTS: Final[dict[str, type[Request]]] = {
    cls.op: cls for cls in (Spawn, Kill, Adopt, Ack, Resend, ExitWhenIdle)
}
#: What the daemon accepts, by op.
NEWS: Final[dict[str, type[News]]] = {
    cls.op: cls
    for cls in (
        Hello,
        Live,
        Spawned,
        Adopted,
        Orphan,
        Exit,
        Synced,
        SpawnFailed,
        AdoptFailed,
        Gone,
        Progress,
        Error,
    )
}
