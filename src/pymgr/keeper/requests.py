"""What the keeper does for each request of the daemon: spawn, kill, adopt, ack, resend, exit when idle.

Rules:
- A frame is decoded by the link's one decoder. A frame that is no request
  is answered with ``error`` and the keeper goes on: a daemon bug must not
  take down the parent of every run. The reply names the request by its
  op, id and field names, never its values (a spawn carries the run's
  marker and environment, and the line ends up in the logs).
- A ``spawn`` that cannot be read but has an id is answered ``spawn_failed``
  with the reason, so the daemon ends the run instead of waiting for it.
- ``spawn`` and ``adopt`` are idempotent by run id: a repeat is answered
  with the run as it is, and a spawn of a run whose exit is unacknowledged
  with that exit.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Protocol

from pymgr.keeper import cgroup as cgroups
from pymgr.keeper import proctree
from pymgr.keeper.adoption import Listings, adopted_cgroup, take_output, vanished
from pymgr.keeper.journal import StatusJournal, replayed_exit
from pymgr.keeper.proctree import ProcRef
from pymgr.keeper.runlog import RunLog
from pymgr.keeper.runs import UNKNOWN_EXIT, Run, run_log
from pymgr.keeper.spawn import SpawnError, SpawnSpec, spawn
from pymgr.keeper.spawnpins import pinned
from pymgr.keeper.treekill import TreeKill
from pymgr.protocol.keeper import (
    REQUESTS,
    Ack,
    Adopt,
    Adopted,
    AdoptFailed,
    CgroupRequest,
    Error,
    ExitWhenIdle,
    Gone,
    KeeperMessageError,
    Kill,
    MissingField,
    News,
    Request,
    Resend,
    Spawn,
    Spawned,
    SpawnFailed,
    UnknownOp,
    decode,
)


class Keeper(Protocol):
    """What a request may use of the keeper's loop (``loop.Keeper``): declared here, so that the loop
    imports this module and this module does not import the loop back."""

    runs: dict[int, Run]
    by_pid: dict[int, Run]
    #: The journal's exits the daemon has not acknowledged, by run id.
    unacked: dict[int, dict[str, Any]]
    journal: StatusJournal
    listings: Listings
    sel: selectors.BaseSelector
    boot_id: str
    cgroup_home: str | None
    exit_when_idle: bool

    def send(self, message: News) -> None: ...

    def first_spawn_replied(self) -> None: ...

    def watch_output(self, run: Run) -> None: ...

    def on_adopted_exit(self, run: Run) -> None: ...


def handle(keeper: Keeper, frame: dict[str, Any]) -> None:
    """Decode one frame of the daemon and do what it asks (see the module rules)."""
    try:
        request = decode(frame, REQUESTS)
    except KeeperMessageError as exc:
        _refuse(keeper, frame, exc)
        return
    try:
        _HANDLERS[type(request)](keeper, request)
    except (KeyError, ValueError, TypeError) as exc:
        # A daemon bug must not take down the parent of every run: say so and go on.
        keeper.send(Error(message=f"bad request {_outline(frame)}: {type(exc).__name__}: {exc}"))


def _refuse(keeper: Keeper, frame: dict[str, Any], exc: KeeperMessageError) -> None:
    task_id = frame.get("id")
    if isinstance(exc, UnknownOp) or not isinstance(task_id, int | None):
        keeper.send(Error(message=f"bad request {_outline(frame)}; ops: {', '.join(REQUESTS)}"))
    elif exc.op == Spawn.op and isinstance(task_id, int) and not isinstance(task_id, bool):
        keeper.send(SpawnFailed(id=task_id, error=f"spawn failed: {exc.reason}"))
    else:
        family = (
            "KeyError" if isinstance(exc, MissingField) else "TypeError"
        )  # as a dict's reader would have said
        keeper.send(Error(message=f"bad request {_outline(frame)}: {family}: {exc.reason}"))


def _outline(frame: dict[str, Any]) -> str:
    """A request as an error names it: its op, its id and its field names. Never the values."""
    return f"(op {frame.get('op')!r}, id {frame.get('id')!r}, fields {', '.join(sorted(map(str, frame)))})"


def _spawn(keeper: Keeper, request: Spawn) -> None:
    task_id = request.id
    if task_id in keeper.runs:
        keeper.send(keeper.runs[task_id].report(Spawned))
        return
    if task_id in keeper.unacked:
        if not _resend_one(keeper, keeper.unacked[task_id]):  # the daemon must not wait on it forever
            keeper.send(
                SpawnFailed(id=task_id, error="its recorded exit is unreadable (keeper.log says why)")
            )
        return
    keeper.journal.spawning(task_id)
    try:
        run = _start(keeper, request)
    except SpawnError as exc:
        keeper.journal.unspawned(task_id)
        keeper.send(SpawnFailed(id=task_id, error=str(exc)))
        return
    keeper.journal.started(run.where())
    keeper.runs[task_id] = run
    keeper.by_pid[run.leader.pid] = run
    keeper.send(run.report(Spawned))
    keeper.first_spawn_replied()
    keeper.watch_output(run)


def _start(keeper: Keeper, request: Spawn) -> Run:
    spec = SpawnSpec.from_request(request)
    try:
        log = run_log(request.id, request.log, RunLog)
    except ValueError as exc:
        raise SpawnError(f"spawn failed: bad log settings {request.log}: {exc}") from None
    cgroup = _run_cgroup(keeper, request.cgroup)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        inside = (
            cgroups.inside(cgroup, keeper.cgroup_home) if cgroup and keeper.cgroup_home else nullcontext()
        )
        with pinned(spec, request.pins) as ready, inside:
            pid, popen = spawn(ready, write_end)
    except (SpawnError, cgroups.CgroupError) as exc:
        os.close(read_end)
        if cgroup is not None:
            cgroup.remove()
        raise SpawnError(str(exc) if isinstance(exc, SpawnError) else f"spawn failed: {exc}") from None
    finally:
        os.close(write_end)
    started = proctree.start_time(pid)
    if started is None:  # our unreaped child always has a /proc entry
        raise SpawnError(f"spawn failed: no /proc entry for our own child {pid}; is /proc mounted?")
    return Run(
        request.id,
        ProcRef(pid, started),
        request.marker,
        keeper.boot_id,
        time.time(),
        popen=popen,
        output_fd=read_end,
        log=log,
        leftovers_grace_s=request.leftovers_grace_s,
        cgroup=cgroup,
    )


def _run_cgroup(keeper: Keeper, settings: CgroupRequest | None) -> cgroups.Cgroup | None:
    """The run's cgroup, made with its limits (None: not asked).

    Raises:
        SpawnError: asked for, and it cannot be made (the run would not be contained).
    """
    if settings is None:
        return None
    if keeper.cgroup_home is None:
        raise SpawnError("spawn failed: the run needs a cgroup, and the keeper has no cgroup2 hierarchy")
    cgroup = cgroups.Cgroup(settings.path)
    try:
        cgroup.create(settings.limits)
    except cgroups.CgroupError as exc:
        cgroup.remove()
        raise SpawnError(f"spawn failed: {exc}") from None
    return cgroup


def _kill(keeper: Keeper, request: Kill) -> None:
    run = keeper.runs.get(request.id)
    if run is None:
        if request.id not in keeper.unacked:
            keeper.send(Gone(id=request.id))
        return
    if run.kill is not None or run.killed:
        return
    run.killed = True
    run.kill = TreeKill(
        run.leader,
        run.marker,
        max(0.0, request.grace_s),
        leader_gone=lambda: run.exited,
        signal_leader=_leader_signaller(run),
        cgroup=run.cgroup,
    )
    run.kill.start(time.monotonic())


def _leader_signaller(run: Run) -> Callable[[signal.Signals], None]:
    def send(sig: signal.Signals) -> None:
        if run.adopted:
            proctree.send_signal(run.leader, sig)  # not our child: pidfd, start time checked
            return
        try:
            os.killpg(run.leader.pid, sig)  # our unreaped child: its group id is still its pid
        except ProcessLookupError:
            pass  # the whole group is gone already

    return send


def _adopt(keeper: Keeper, request: Adopt) -> None:
    task_id = request.id
    if task_id in keeper.runs:
        keeper.send(keeper.runs[task_id].report(Adopted))
        return
    leader = ProcRef(request.pid, request.start_time)
    fd = proctree.open_checked(leader) if request.boot_id == keeper.boot_id else None
    if fd is None:
        reason = vanished(leader, request.boot_id, keeper.boot_id)
        keeper.journal.unspawned(task_id)  # an earlier keeper's spawn, if it was one: over
        keeper.send(AdoptFailed(id=task_id, error=reason))
        return
    run = Run(task_id, leader, request.marker, keeper.boot_id, request.started_at or time.time(), pidfd=fd)
    run.error = UNKNOWN_EXIT
    run.cgroup = adopted_cgroup(leader, request.cgroup)
    take_output(run, request.output, request.log, keeper.listings)
    keeper.runs[task_id] = run
    keeper.sel.register(fd, selectors.EVENT_READ, lambda _fd, mask: keeper.on_adopted_exit(run))
    keeper.send(run.report(Adopted))
    keeper.watch_output(run)


def _ack(keeper: Keeper, request: Ack) -> None:
    keeper.journal.ack(request.id)


def _resend(keeper: Keeper, request: Resend) -> None:
    for status in list(keeper.unacked.values()):
        _resend_one(keeper, status)


def _resend_one(keeper: Keeper, status: dict[str, Any]) -> bool:
    """Send a journalled exit again; False if its line holds none (said on stderr)."""
    message = replayed_exit(status)
    if message is not None:
        keeper.send(message)
    return message is not None


def _exit_when_idle(keeper: Keeper, request: ExitWhenIdle) -> None:
    keeper.exit_when_idle = True


_HANDLERS: dict[type[Request], Callable[[Keeper, Any], None]] = {
    Spawn: _spawn,
    Kill: _kill,
    Adopt: _adopt,
    Ack: _ack,
    Resend: _resend,
    ExitWhenIdle: _exit_when_idle,
}
