"""Stopping a run and everything it started, as a state machine the keeper's loop drives.

Rules:
- Stop: SIGTERM to the run's leader (its whole process group while the
  leader is the keeper's unreaped child) and to every other process of the
  run (``_proctree.find_run_processes``: descendants, and processes with
  the run's marker, such as a grandchild that called ``setsid()``); wait
  up to the grace period for all of them; then look again (late forks,
  leftovers of a leader that exited) and SIGKILL whatever is still there;
  wait up to ``KILL_WAIT_S``; then it is done, naming the survivors.
- The keeper does the killing, not the daemon: it is the leader's parent,
  so it alone knows the leader is unreaped, and only then may the process
  group (whose id is the leader's pid) be signalled without hitting a
  stranger that reused the pid. A stop in progress also survives the
  daemon dying.
- Every other process is signalled through a pidfd after checking its
  start time (``_proctree.send_signal``). A run re-adopted after the
  keeper died is not this keeper's child: its leader is signalled the same
  careful way, and its group is reached through the descendant walk.
- The same machine stops what a leader left running when it exited on its
  own (``kill_leftovers``): then the processes come from a cheap ``find``
  (the keeper's re-parented children, ``_proctree.leftovers``), which is
  asked again whenever everything seen has exited, so what they forked as
  the signal came is stopped too.
- With a cgroup (``cgroup``), the run's processes are its members,
  whatever session, parent or environment they took: SIGTERM goes to each,
  SIGKILL is ``cgroup.kill`` (which also takes what forks meanwhile), and
  the stop is over only when ``cgroup.events`` says ``populated 0``.
- No sleeping and no threads: ``poll(now)`` is called by the keeper's loop
  (on every child exit and on a short tick), or by the daemon's event loop
  for its commands (``modules/_cmdproc.py``), and returns the survivors
  once the stop is over, None until then.
- A stop knows a run's processes by one of three: its cgroup, a ``find``
  of the caller's, or the run's marker. Never none of them: with an empty
  marker, every process started since the leader would match.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Mapping

from pymgr.keeper import proctree as _proctree
from pymgr.keeper.cgroup import Cgroup
from pymgr.keeper.proctree import ProcRef

#: Seconds to wait for processes to vanish after SIGKILL. SIGKILL cannot be
#: caught; only a process stuck in the kernel (uninterruptible I/O) outlives
#: this, and waiting longer would hold up a stop that cannot finish anyway.
KILL_WAIT_S = 5.0


class TreeKill:
    """The stop of one run (see the module rules)."""

    def __init__(
        self,
        leader: ProcRef,
        marker: Mapping[str, str],
        grace_s: float,
        *,
        leader_gone: Callable[[], bool],
        signal_leader: Callable[[signal.Signals], None],
        find: Callable[[], set[ProcRef]] | None = None,
        cgroup: Cgroup | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        """
        Args:
            leader: the run's first process.
            marker: the run's ``_proctree.run_marker``.
            grace_s: seconds between SIGTERM and SIGKILL.
            leader_gone: True once the leader has exited (reaped, for a child).
            signal_leader: signals the leader (and its group, when safe).
            find: a cheap look for the run's processes (the leftovers of an exited
                leader), used instead of the walk over every process; cheap
                enough to look again each time everything seen has exited,
                which catches what they forked before the signal reached them.
            cgroup: the run's cgroup: its members are the run's processes, and
                ``find`` is not used.
            report: takes the line said when SIGKILL goes out (None: the keeper's
                stderr, naming the run by its marker).

        Raises:
            ValueError: no cgroup, no ``find`` and an empty marker.
        """
        if cgroup is None and find is None and not marker:
            raise ValueError("a tree kill without a cgroup or a find needs the run's marker")
        self.leader = leader
        self.marker = marker
        self.grace_s = grace_s
        self._leader_gone = leader_gone
        self._signal_leader = signal_leader
        self._phase = "new"
        self._deadline = 0.0
        self._watched: set[ProcRef] = set()
        self._cheap_find = find
        self._cgroup = cgroup
        self._report = report or self._to_keeper_log
        #: Every process of the run the stop has signalled, leader excluded.
        self.signalled: set[ProcRef] = set()

    def _to_keeper_log(self, line: str) -> None:
        print(f"keeper: run {self.marker.get(_proctree.TASK_ID_VAR)}: {line}", file=sys.stderr, flush=True)

    def find(self) -> set[ProcRef]:
        """The run's live processes now, leader excluded (by its cgroup, the ``find`` given, or its marker)."""
        if self._cgroup is not None:
            found = set()
            for pid in self._cgroup.pids():
                started = _proctree.start_time(pid)
                if pid != self.leader.pid and started is not None:
                    found.add(ProcRef(pid, started))
            return found
        if self._cheap_find is not None:
            return self._cheap_find()
        return _proctree.find_run_processes(self.leader, self.marker, leader_reaped=self._leader_gone())

    def _send(self, sig: signal.Signals, refs: set[ProcRef]) -> None:
        self.signalled |= refs
        if not self._leader_gone():
            self._signal_leader(sig)
        if self._cgroup is not None:
            self._cgroup.kill() if sig == signal.SIGKILL else self._cgroup.signal(sig)
            return
        for ref in refs:
            _proctree.send_signal(ref, sig)

    def _empty(self) -> bool:
        """Nothing of the run is left (with a cgroup: the kernel says so)."""
        if self._watched or not self._leader_gone():
            return False
        return self._cgroup is None or not self._cgroup.populated()

    def start(self, now: float, known: set[ProcRef] | None = None) -> None:
        """Send SIGTERM to every process of the run (``known``: those, already found)."""
        self._watched = self.find() if known is None else set(known)
        self._send(signal.SIGTERM, self._watched)
        self._phase = "term"
        self._deadline = now + self.grace_s

    def poll(self, now: float) -> set[ProcRef] | None:
        """Advance the stop; returns the processes that outlived SIGKILL once it is over, else None."""
        self._watched = {ref for ref in self._watched if _proctree.alive(ref)}
        if (
            not self._watched
            and self._leader_gone()
            and (self._cheap_find is not None or self._cgroup is not None)
        ):
            self._watched = self.find()  # what the exited ones forked just before the signal reached them
            self._send(signal.SIGTERM if self._phase == "term" else signal.SIGKILL, self._watched)
        if self._empty():
            return set()
        if now < self._deadline:
            return None
        if self._phase == "term":
            self._watched |= self.find()
            if self._empty():
                return set()
            count = len(self._watched) + (not self._leader_gone())
            self._report(
                f"still running after {self.grace_s:.1f}s grace, sending SIGKILL to {count} process(es)"
            )
            self._send(signal.SIGKILL, self._watched)
            self._phase = "kill"
            self._deadline = now + KILL_WAIT_S
            return None
        survivors = self._watched | (self.find() if self._cgroup is not None else set())
        if not self._leader_gone():
            survivors.add(self.leader)
        return survivors
