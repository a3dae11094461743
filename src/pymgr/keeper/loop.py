"""The keeper's loop: one thread, one selector, every run and the daemon's connection.

Run as ``python -m pymgr.keeper --state-dir DIR`` (``setup.main``); the
daemon starts it when none is running. One keeper per state directory.

Rules:
- Standard library only, one thread, its own session: signals meant for
  the daemon (a terminal's ^C, ``kill -TERM`` of the daemon) never reach
  it, and it outlives the daemon: a daemon restart or crash leaves every
  run running, still supervised, its output still drained, its exit still
  recorded.
- One keeper per state directory: it holds ``<run_dir>/keeper.lock``
  (flock); a second one exits at once, leaving the first to serve.
- It listens on ``<run_dir>/keeper.sock`` (mode 0600, in a 0700
  directory) and serves one daemon at a time (``connection``), with
  length-prefixed JSON frames holding typed messages
  (``pymgr.protocol.keeper``); ``requests`` does what each request asks. A new connection replaces the old one, after the
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

import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

from pymgr.keeper import cgroup as cgroups
from pymgr.keeper import proctree, requests
from pymgr.keeper.adoption import Listings
from pymgr.keeper.connection import READ_BYTES, DaemonConnection, accept
from pymgr.keeper.journal import StatusJournal, orphan_reports, replayed_exit, settle_spawns, status_entry
from pymgr.keeper.runs import Run, stop_leftovers
from pymgr.protocol.keeper import CLOSED, PROTOCOL, Exit, FrameError, Hello, Live, News, Progress, Synced

#: Seconds between two looks at the processes of runs being stopped: short
#: enough that a stop ends promptly, long enough to cost nothing.
KILL_TICK_S = 0.05


class Keeper:
    """The keeper's loop and its state (see the module rules)."""

    def __init__(self, listener: socket.socket, run_dir: str, idle_exit_s: float) -> None:
        self.listener = listener
        self.idle_exit_s = idle_exit_s
        #: The keeper's own cgroup, where it returns after spawning inside a run's (``cgroup.inside``).
        self.cgroup_home = cgroups.own_cgroup()
        self.started_at = time.time()
        self.sel: selectors.BaseSelector = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ, self._on_accept)
        self.journal = StatusJournal(os.path.join(run_dir, "status.journal"))
        self.boot_id = proctree.boot_id()
        settle_spawns(self.journal, self.boot_id)  # an earlier keeper's spawns cut short
        self.unacked = self.journal.unacked
        #: Exits of this loop turn, sent once the journal holding them is synced.
        self.exits: list[Exit] = []
        self.runs: dict[int, Run] = {}
        #: Listings of log directories for the adopts of the read in progress (``adoption.Listings``).
        self.listings = Listings()
        self.by_pid: dict[int, Run] = {}
        self.conn: DaemonConnection | None = None
        self.pending_progress: dict[int, tuple[float, str | None]] = {}
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
                self.send(status)

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
        self.journal.add(status_entry(status))
        self.exits.append(status)  # sent at the end of the loop turn, after the journal's fsync
        self.pending_progress.pop(run.id, None)
        if not self.runs:
            self.idle_since = time.monotonic()

    def on_adopted_exit(self, run: Run) -> None:
        """An adopted run's pidfd became readable: its leader exited."""
        run.exited = True
        self._pull_output(run)
        if run.kill is None:
            self._finish(run)
        elif run.pidfd is not None and run.pidfd >= 0:
            self.sel.unregister(run.pidfd)  # level-triggered: stop watching, the kill tick finishes it
            os.close(run.pidfd)
            run.pidfd = -1

    # -- output -------------------------------------------------------------------

    def watch_output(self, run: Run) -> None:
        """Drain the run's output pipe whenever it is readable."""
        if run.output_fd is not None:
            os.set_blocking(run.output_fd, False)
            self.sel.register(run.output_fd, selectors.EVENT_READ, lambda fd, mask: self._pull_output(run))

    def _pull_output(self, run: Run) -> None:
        ended, progress = run.drain()
        if progress is not None:
            run.progress = progress
            self.pending_progress[run.id] = progress
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
            self.send(Progress(id=task_id, percent=percent, message=message))

    # -- the daemon's connection ------------------------------------------------------

    def _on_accept(self, listener: Any, mask: int) -> None:
        sock = accept(self.listener)
        if sock is None:
            return
        if self.conn is not None:
            self._on_readable(self.conn.sock, selectors.EVENT_READ)  # a dead daemon's last requests first
            self._close_conn()
        self.conn = DaemonConnection(sock, self.sel, self._on_conn_event)
        self.exit_when_idle = False
        self.send(Hello(protocol=PROTOCOL, keeper_pid=os.getpid(), boot_id=self.boot_id))
        for run in self.runs.values():
            self.send(run.report(Live))
        for orphan in orphan_reports(self.journal, self.runs):
            self.send(orphan)
        self.journal.sync()  # what is replayed is durable first, as every exit is
        for entry in self.unacked.values():
            status = replayed_exit(entry)
            if status is not None:
                self.send(status)
        self.send(Synced())

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
                    data = conn.sock.recv(READ_BYTES)
                except BlockingIOError:
                    break
                conn.decoder.receive_data(data)
                while self.conn is conn and isinstance(frame := conn.decoder.next_frame(), dict):
                    requests.handle(self, frame)
                self.listings.clear()  # a read's adopts shared one listing of the logs directory
                if self.conn is not conn:
                    return  # dropped while handling (a daemon that stopped reading)
                if frame is CLOSED or not data:
                    self._close_conn()
                    return
        except (OSError, FrameError) as exc:
            print(f"keeper: dropping the daemon's connection: {exc}", file=sys.stderr, flush=True)
            self._close_conn()

    def send(self, message: News) -> None:
        """Queue one message for the daemon (dropped when none is connected: its hello replays the state)."""
        if self.conn is None:
            return
        self.conn.send(message)
        if self.conn.broken:
            self._close_conn()
        # The rest is written at the end of the loop turn (``serve``): one system call for many replies.

    def first_spawn_replied(self) -> None:
        """The first "spawned" of a turn leaves now, not after the rest of the turn: the new process
        competes for the CPU from here on, and the daemon waits for this to announce the run."""
        if not self._replied:
            self._replied = True
            self._write_out()

    def _write_out(self) -> None:
        if self.conn is not None:
            self.conn.write_out()
            if self.conn.broken:
                self._close_conn()

    def _close_conn(self, flush: bool = False) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        conn.close(flush)
        self.idle_since = time.monotonic()
