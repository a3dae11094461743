"""The keeper: the small process that is the parent of every task run.

Run as ``python -m pymgr.keeper --state-dir DIR``; the daemon starts
it when none is running. One keeper per state directory.

Rules:
- Standard library only, one thread, its own session: signals meant for
  the daemon (a terminal's ^C, ``kill -TERM`` of the daemon) never reach
  it, and it outlives the daemon: a daemon restart or crash leaves every
  run running, still supervised, its output still drained, its exit still
  recorded.
- One keeper per state directory: it holds ``<run_dir>/keeper.lock``
  (flock); a second one exits at once, leaving the first to serve.
- It listens on ``<run_dir>/keeper.sock`` (mode 0600, in a 0700
  directory) and serves one daemon at a time, with length-prefixed JSON
  frames (``pymgr.protocol.keeper``). A new connection replaces the old one, after the
  old one's pending requests were handled (a dead daemon's last spawn
  request is never lost nor run twice: spawn is idempotent by run id).
- On connect it sends ``hello``, then ``live`` for each run, ``orphan``
  for each run an earlier keeper started (its journal says so) whose end
  nobody saw and that it does not supervise, ``exit`` for each status not
  acknowledged yet, then ``synced``. Only a process a keeper made is ever
  reported: none is looked for by its environment.
- Requests: ``spawn``, ``kill``, ``adopt``, ``ack``, ``resend``,
  ``exit_when_idle``. Replies and news: ``spawned``, ``spawn_failed``,
  ``adopted``, ``adopt_failed``, ``gone`` (no such run here), ``exit``,
  ``progress`` (the latest per run only, sent when the daemon has read
  everything before: a slow daemon never makes the keeper block or grow).
  A daemon that stops reading for ``MAX_PENDING_BYTES`` is disconnected;
  it gets the whole state again when it reconnects. Replies leave at the
  end of the loop turn, together, except the first ``spawned`` of a turn,
  which leaves at once (a lone start is announced sooner; a burst's
  replies still leave in a few writes).
- A ``spawn`` request's ``pins`` name the argv elements holding checked
  path parameters: each is opened again beneath its base right before the
  spawn, and the run gets ``/proc/self/fd/N`` (``spawnpins``); a path
  swapped for a symlink since the check is a ``spawn_failed``.
- Every report of a live run carries ``output: [fd, inode]``, its pipe's
  read end here, so the daemon can hold a second one; ``adopt`` carries
  where the daemon's is (``output: {pid, fd, inode}``) and the log
  settings, so a run adopted after a keeper died is drained into the same
  log again (``outputhold``).
- It is a child subreaper: descendants orphaned by a run's leader are
  re-parented here and reaped, never left as zombies; exits are noticed
  through SIGCHLD (``signal.set_wakeup_fd``) and ``waitpid(-1, WNOHANG)``.
- It exits when it has no run and no daemon was connected for
  ``--idle-exit-s`` seconds, or once it has no run after ``exit_when_idle``
  (a daemon shutting down with ``on_shutdown = "stop"``) or SIGTERM.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from pymgr._fsguard import ensure_private_dir, open_private
from pymgr.keeper import cgroup as _cgroup, proctree as _proctree
from pymgr.protocol.keeper import CLOSED, PROTOCOL, FrameDecoder, FrameError
from pymgr.protocol.keeper import encode_frame as encode
from pymgr.keeper.setup import listen, prepare_process
from pymgr.keeper.runs import (
    UNKNOWN_EXIT, Listings, Run, StatusJournal, orphans, run_log, settle_spawns, stop_leftovers, take_output,
    vanished,
)  # fmt: skip
from pymgr.keeper.proctree import ProcRef
from pymgr.keeper.runlog import RunLog
from pymgr.keeper.spawnpins import pinned
from pymgr.keeper.spawn import SpawnError, SpawnSpec, private_descriptors, reset_inherited_signals, spawn
from pymgr.keeper.treekill import TreeKill

#: Bytes of messages waiting for a daemon that does not read before it is
#: disconnected: far above any burst (a message is ~200 bytes; progress is
#: coalesced), so only a stuck daemon hits it.
MAX_PENDING_BYTES = 8 * 1024 * 1024

#: Bytes of replies that are written at once rather than at the end of the
#: loop turn (a "spawned" reply is ~200 bytes: groups of about 20).
FLUSH_BYTES = 4096

#: Seconds between two looks at the processes of runs being stopped: short
#: enough that a stop ends promptly, long enough to cost nothing.
KILL_TICK_S = 0.05


class _Conn:
    """The daemon's connection: a decoder in, a bounded buffer out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self.out = bytearray()
        #: Registered for EVENT_WRITE (some of ``out`` did not fit in the socket).
        self.writing = False


class Keeper:
    """The keeper's loop and its state (see the module rules)."""

    def __init__(self, listener: socket.socket, run_dir: str, idle_exit_s: float) -> None:
        self.listener = listener
        self.idle_exit_s = idle_exit_s
        #: The keeper's own cgroup, where it returns after spawning inside a run's (``_cgroup.inside``).
        self.cgroup_home = _cgroup.own_cgroup()
        self.started_at = time.time()
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ, self._on_accept)
        self.journal = StatusJournal(os.path.join(run_dir, "status.journal"))
        self.boot_id = _proctree.boot_id()
        settle_spawns(self.journal, self.boot_id)  # an earlier keeper's spawns cut short
        self.unacked = self.journal.unacked
        #: Exits of this loop turn, sent once the journal holding them is synced.
        self.exits: list[dict[str, Any]] = []
        self.runs: dict[int, Run] = {}
        self._listings = Listings()  # for the adopts of the read in progress
        self.by_pid: dict[int, Run] = {}
        self.conn: _Conn | None = None
        self.pending_progress: dict[int, list[Any]] = {}
        self.exit_when_idle = False
        self.idle_since = time.monotonic()
        wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(wakeup_read, selectors.EVENT_READ, self._on_signal)
        self._wakeup = (wakeup_read, wakeup_write)
        signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._note_signal)
        self._signals: list[int] = []
        #: A "spawned" reply already left in this loop turn: the next ones wait for its end.
        self._replied = False

    def _note_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    # -- the loop -----------------------------------------------------------------

    def serve(self) -> None:
        """Run until idle (see the module rules)."""
        self._reap()  # children that exited before the handler was in place
        while not self._done():
            self._replied = False
            for key, mask in self.sel.select(self._timeout()):
                key.data(key.fileobj, mask)
            self._tick()
            self._send_exits()
            self._write_out()
            self._flush_progress()  # when the daemon has read everything before
            self._write_out()
        self._close_conn(flush=True)

    def _done(self) -> bool:
        if self.runs:
            return False
        if self.exit_when_idle:
            return True
        return self.conn is None and time.monotonic() - self.idle_since >= self.idle_exit_s

    def _timeout(self) -> float | None:
        if any(run.kill is not None for run in self.runs.values()):
            return KILL_TICK_S
        if not self.runs and self.conn is None:
            return max(0.0, self.idle_since + self.idle_exit_s - time.monotonic())
        return None

    def _on_signal(self, fd: Any, mask: int) -> None:
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass  # drained
        signals, self._signals = self._signals, []
        if any(sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) for sig in signals):
            self.exit_when_idle = True
        self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.by_pid.pop(pid, None)
            if run is None:
                continue  # an orphaned descendant that was re-parented here
            run.set_exit(os.waitstatus_to_exitcode(status))
            self._pull_output(run)
            if run.kill is None and not stop_leftovers(run, self.by_pid, time.monotonic()):
                self._finish(run)

    def _tick(self) -> None:
        now = time.monotonic()
        for run in list(self.runs.values()):
            if run.kill is None:
                continue
            survivors = run.kill.poll(now)
            if survivors is None:
                continue
            run.kill = None
            run.survivors = survivors
            if run.exited:
                self._finish(run)

    def _send_exits(self) -> None:
        """The exits of this turn: durable first (one fsync for all), then told to the daemon."""
        if self.exits:
            self.journal.sync()
            exits, self.exits = self.exits, []
            for status in exits:
                self._send({"op": "exit", **status})

    def _finish(self, run: Run) -> None:
        """The run is over: store its status durably, then tell the daemon."""
        self.runs.pop(run.id, None)
        if run.cgroup is not None:
            run.cgroup.remove()  # empty unless the type keeps leftovers (kill_leftovers = false)
        if run.pidfd is not None and run.pidfd >= 0:
            self.sel.unregister(run.pidfd)
            os.close(run.pidfd)
            run.pidfd = -1
        status = run.status()
        self.journal.add(status)
        self.exits.append(status)  # sent at the end of the loop turn, after the journal's fsync
        self.pending_progress.pop(run.id, None)
        if not self.runs:
            self.idle_since = time.monotonic()

    # -- output -------------------------------------------------------------------

    def _watch_output(self, run: Run) -> None:
        if run.output_fd is not None:
            os.set_blocking(run.output_fd, False)
            self.sel.register(run.output_fd, selectors.EVENT_READ, lambda fd, mask: self._pull_output(run))

    def _pull_output(self, run: Run) -> None:
        ended, progress = run.drain()
        if progress is not None:
            run.progress = progress
            self.pending_progress[run.id] = list(progress)
        if ended and run.output_fd is not None:
            self.sel.unregister(run.output_fd)
            run.close_output()

    def _flush_progress(self) -> None:
        if self.conn is None:
            self.pending_progress.clear()  # the next hello's "live" carries the latest
            return
        if self.conn.out or not self.pending_progress:
            return  # only once the daemon has taken everything before: the latest is all it needs
        pending, self.pending_progress = self.pending_progress, {}
        for task_id, (percent, message) in pending.items():
            self._send({"op": "progress", "id": task_id, "percent": percent, "message": message})

    # -- the daemon's connection ------------------------------------------------------

    def _on_accept(self, listener: Any, mask: int) -> None:
        sock, _ = self.listener.accept()
        uid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
        if uid not in (0, os.geteuid()):
            sock.close()  # the socket is 0600 already; this is a second lock on the door
            return
        if self.conn is not None:
            self._on_readable(self.conn.sock, selectors.EVENT_READ)  # a dead daemon's last requests first
            self._close_conn()
        sock.setblocking(False)
        self.conn = _Conn(sock)
        self.exit_when_idle = False
        self.sel.register(sock, selectors.EVENT_READ, self._on_conn_event)
        self._send({"op": "hello", "protocol": PROTOCOL, "keeper_pid": os.getpid(), "boot_id": self.boot_id})
        for run in self.runs.values():
            self._send({"op": "live", **run.info()})
        for where in orphans(self.journal, self.runs):
            self._send({"op": "orphan", **where})
        self.journal.sync()  # what is replayed is durable first, as every exit is
        for status in self.unacked.values():
            self._send({"op": "exit", **status})
        self._send({"op": "synced"})

    def _on_conn_event(self, sock: Any, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._write_out()
        if mask & selectors.EVENT_READ and self.conn is not None:
            self._on_readable(sock, mask)

    def _on_readable(self, sock: Any, mask: int) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            while True:
                try:
                    data = conn.sock.recv(256 * 1024)
                except BlockingIOError:
                    break
                conn.decoder.receive_data(data)
                while self.conn is conn and isinstance(message := conn.decoder.next_frame(), dict):
                    self._handle(message)
                self._listings.clear()  # a read's adopts shared one listing of the logs directory
                if self.conn is not conn:
                    return  # dropped while handling (a daemon that stopped reading)
                if message is CLOSED or not data:
                    self._close_conn()
                    return
        except (OSError, FrameError) as exc:
            print(f"keeper: dropping the daemon's connection: {exc}", file=sys.stderr, flush=True)
            self._close_conn()

    def _send(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn is None:
            return
        conn.out += encode(message)
        if len(conn.out) > MAX_PENDING_BYTES:
            print("keeper: the daemon stopped reading; dropping its connection", file=sys.stderr, flush=True)
            self._close_conn()
        elif len(conn.out) >= FLUSH_BYTES and not conn.writing:
            self._write_out()  # a burst of replies leaves in groups: the daemon starts on them early
        # The rest is written at the end of the loop turn (``serve``): one system call for many replies.

    def _write_out(self) -> None:
        conn = self.conn
        if conn is None or (not conn.out and not conn.writing):
            return
        try:
            sent = conn.sock.send(conn.out) if conn.out else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close_conn()
            return
        del conn.out[:sent]
        if conn.writing != bool(conn.out):  # wait for the socket to drain only while something is left
            conn.writing = bool(conn.out)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.writing else 0)
            self.sel.modify(conn.sock, events, self._on_conn_event)

    def _close_conn(self, flush: bool = False) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if flush and conn.out:
            conn.sock.settimeout(1.0)
            try:
                conn.sock.sendall(conn.out)
            except OSError:
                pass  # the daemon went away; it reads the status files on its next connect
        self.sel.unregister(conn.sock)
        conn.sock.close()
        self.idle_since = time.monotonic()

    # -- requests -------------------------------------------------------------------

    def _handle(self, message: dict[str, Any]) -> None:
        handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "spawn": self._do_spawn,
            "kill": self._do_kill,
            "adopt": self._do_adopt,
            "ack": self._do_ack,
            "resend": lambda _: [self._send({"op": "exit", **s}) for s in self.unacked.values()],
            "exit_when_idle": lambda _: setattr(self, "exit_when_idle", True),
        }
        handler = handlers.get(str(message.get("op")))
        if handler is None or not isinstance(message.get("id", 0), int):
            self._send({"op": "error", "message": f"bad request {_outline(message)}; ops: {', '.join(handlers)}"})
            return
        try:
            handler(message)
        except (KeyError, ValueError, TypeError) as exc:
            # A daemon bug must not take down the parent of every run: say so and go on.
            self._send({"op": "error", "message": f"bad request {_outline(message)}: {type(exc).__name__}: {exc}"})

    def _do_spawn(self, message: dict[str, Any]) -> None:
        task_id = message["id"]
        if task_id in self.runs:
            self._send({"op": "spawned", **self.runs[task_id].info()})
            return
        if task_id in self.unacked:
            self._send({"op": "exit", **self.unacked[task_id]})
            return
        self.journal.spawning(task_id)
        try:
            run = self._start(task_id, message)
        except SpawnError as exc:
            self.journal.unspawned(task_id)
            self._send({"op": "spawn_failed", "id": task_id, "error": str(exc)})
            return
        self.journal.started(run.where())
        self.runs[task_id] = run
        self.by_pid[run.leader.pid] = run
        self._send({"op": "spawned", **run.info()})
        if not self._replied:
            # The first of a turn leaves now, not after the rest of the turn: the new process competes
            # for the CPU from here on, and the daemon waits for this to announce the run.
            self._replied = True
            self._write_out()
        self._watch_output(run)

    def _start(self, task_id: int, message: dict[str, Any]) -> Run:
        spec = SpawnSpec.from_message(message)
        try:
            log = run_log(task_id, message.get("log"), RunLog)
        except (KeyError, ValueError, TypeError) as exc:
            raise SpawnError(f"spawn failed: bad log settings {message.get('log')!r}: {exc}") from None
        cgroup = self._run_cgroup(message.get("cgroup"))
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            with (
                pinned(spec, message.get("pins")) as ready,
                _cgroup.inside(cgroup, self.cgroup_home) if cgroup and self.cgroup_home else nullcontext(),
            ):
                pid, popen = spawn(ready, write_end)
        except (SpawnError, _cgroup.CgroupError) as exc:
            os.close(read_end)
            if cgroup is not None:
                cgroup.remove()
            raise SpawnError(str(exc) if isinstance(exc, SpawnError) else f"spawn failed: {exc}") from None
        finally:
            os.close(write_end)
        started = _proctree.start_time(pid)
        if started is None:  # our unreaped child always has a /proc entry
            raise SpawnError(f"spawn failed: no /proc entry for our own child {pid}; is /proc mounted?")
        grace = message.get("leftovers_grace_s")
        return Run(
            task_id, ProcRef(pid, started), str(message.get("marker", "")), self.boot_id, time.time(),
            popen=popen, output_fd=read_end, log=log, leftovers_grace_s=None if grace is None else float(grace),
            cgroup=cgroup,
        )  # fmt: skip

    def _run_cgroup(self, settings: Any) -> _cgroup.Cgroup | None:
        """The run's cgroup, made with its limits, from the spawn request's ``cgroup`` (None: not asked).

        Raises:
            SpawnError: asked for, and it cannot be made (the run would not be contained).
        """
        if not settings:
            return None
        if self.cgroup_home is None:
            raise SpawnError("spawn failed: the run needs a cgroup, and the keeper has no cgroup2 hierarchy")
        cgroup = _cgroup.Cgroup(str(settings["path"]))
        try:
            cgroup.create({str(k): str(v) for k, v in dict(settings.get("limits") or {}).items()})
        except _cgroup.CgroupError as exc:
            cgroup.remove()
            raise SpawnError(f"spawn failed: {exc}") from None
        return cgroup

    def _do_kill(self, message: dict[str, Any]) -> None:
        run = self.runs.get(message["id"])
        if run is None:
            if message["id"] not in self.unacked:
                self._send({"op": "gone", "id": message["id"]})
            return
        if run.kill is not None or run.killed:
            return
        run.killed = True
        grace_s = max(0.0, float(message.get("grace_s", 0)))
        run.kill = TreeKill(
            run.leader, run.marker, grace_s, leader_gone=lambda: run.exited, signal_leader=self._leader_signaller(run),
            cgroup=run.cgroup,
        )  # fmt: skip
        run.kill.start(time.monotonic())

    def _leader_signaller(self, run: Run) -> Callable[[signal.Signals], None]:
        def send(sig: signal.Signals) -> None:
            if run.adopted:
                _proctree.send_signal(run.leader, sig)  # not our child: pidfd, start time checked
                return
            try:
                os.killpg(run.leader.pid, sig)  # our unreaped child: its group id is still its pid
            except ProcessLookupError:
                pass  # the whole group is gone already

        return send

    def _do_adopt(self, message: dict[str, Any]) -> None:
        task_id = message["id"]
        if task_id in self.runs:
            self._send({"op": "adopted", **self.runs[task_id].info()})
            return
        leader = ProcRef(int(message["pid"]), int(message["start_time"]))
        fd = _proctree.open_checked(leader) if message.get("boot_id") == self.boot_id else None
        if fd is None:
            reason = vanished(leader, message.get("boot_id"), self.boot_id)
            self.journal.unspawned(task_id)  # an earlier keeper's spawn, if it was one: over
            self._send({"op": "adopt_failed", "id": task_id, "error": reason})
            return
        run = Run(
            task_id, leader, str(message.get("marker", "")), self.boot_id,
            float(message.get("started_at") or time.time()), pidfd=fd,
        )  # fmt: skip
        run.error = UNKNOWN_EXIT
        run.cgroup = _adopted_cgroup(leader, message.get("cgroup"))
        take_output(run, message, self._listings)
        self.runs[task_id] = run
        self.sel.register(fd, selectors.EVENT_READ, lambda _fd, mask: self._on_adopted_exit(run))
        self._send({"op": "adopted", **run.info()})
        self._watch_output(run)

    def _on_adopted_exit(self, run: Run) -> None:
        run.exited = True
        self._pull_output(run)
        if run.kill is None:
            self._finish(run)
        elif run.pidfd is not None and run.pidfd >= 0:
            self.sel.unregister(run.pidfd)  # level-triggered: stop watching, the kill tick finishes it
            os.close(run.pidfd)
            run.pidfd = -1

    def _do_ack(self, message: dict[str, Any]) -> None:
        self.journal.ack(message["id"])


def _adopted_cgroup(leader: ProcRef, path: Any) -> _cgroup.Cgroup | None:
    """The cgroup the daemon recorded for a run it asks to adopt, if the leader is in it still."""
    if not isinstance(path, str) or not path:
        return None
    cgroup = _cgroup.Cgroup(path)
    return cgroup if leader.pid in cgroup.pids() else None


def _outline(message: dict[str, Any]) -> str:
    """A request as an error names it: its op, its id and its field names. Never the values: a
    spawn carries the run's marker and environment, and this line ends up in the logs."""
    return f"(op {message.get('op')!r}, id {message.get('id')!r}, fields {', '.join(sorted(map(str, message)))})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pymgr.keeper", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", required=True, help="the daemon's state_dir")
    parser.add_argument("--idle-exit-s", type=float, default=30.0, help="linger this long with nothing to do")
    args = parser.parse_args(argv)
    run_dir = os.path.join(os.path.abspath(args.state_dir), "run")
    try:
        ensure_private_dir(run_dir)
        lock = open_private(os.path.join(run_dir, "keeper.lock"), os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        print(f"keeper: cannot take {run_dir}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 1
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"keeper: another keeper serves {run_dir}; exiting", file=sys.stderr, flush=True)
        return 0
    os.ftruncate(lock, 0)
    os.write(lock, f"{os.getpid()}\n".encode())
    listener = listen(run_dir)
    prepare_process()
    reset = reset_inherited_signals()  # before the handlers: runs must not inherit what nohup or tmux ignored
    if reset:
        print(f"keeper: reset inherited signal dispositions: {', '.join(reset)}", file=sys.stderr, flush=True)
    private_descriptors()  # before any spawn: posix_spawn leaks no descriptor then
    print(f"keeper: pid {os.getpid()} serving {run_dir}", file=sys.stderr, flush=True)
    try:
        Keeper(listener, run_dir, args.idle_exit_s).serve()
    finally:
        os.unlink(os.path.join(run_dir, "keeper.sock"))  # before the lock goes: no other keeper bound it
        listener.close()
    print(f"keeper: pid {os.getpid()} exiting: no runs left", file=sys.stderr, flush=True)
    return 0
