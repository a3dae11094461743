"""Containment of a run or a command in its own cgroup v2: nothing it starts can leave.

Rules:
- A process cannot leave its cgroup without write access to another
  cgroup's ``cgroup.procs``, whatever it does with its session, its parent
  or its environment (``setsid env -i`` escapes the process group and the
  marker, not the cgroup). So each run and each command gets a cgroup of
  its own, under ``<parent>/<name>/<instance>/`` (the instance is named for
  the state directory: two daemons never share one), and is stopped with
  ``cgroup.kill`` (Linux 5.14+; before that, SIGKILL to each member until
  none is left); ``cgroup.events`` saying ``populated 0`` proves it empty.
- The process joins its cgroup before its first instruction: the spawner
  (the keeper, single-threaded; or the daemon, on its one event-loop
  thread) moves itself into the new cgroup, spawns, and moves back
  (``inside``); a child inherits its parent's cgroup at fork. Why not the
  alternatives: Python exposes neither clone3's ``CLONE_INTO_CGROUP`` nor
  glibc's ``posix_spawnattr_setcgroup_np``; a ``preexec_fn`` is unsafe in a
  threaded daemon and forbidden in the keeper; and writing the child's pid
  once it runs leaves a window in which it can fork a process that stays
  outside. Moving costs ~0.07 ms each way here.
- The parent is the daemon's own cgroup (``0::`` of /proc/self/cgroup) in
  the first cgroup2 mount, or a configured directory. Where none is
  writable, ``open_tree`` says why and the caller keeps the older method
  (session, process group, marker), recording that leftovers were not
  checked.
- Limits (``memory.max``, ``pids.max``, ``cpu.max``) need their controller
  handed down from the parent (``cgroup.subtree_control`` at each level);
  one that is not available is a ``CgroupError`` naming it and what is
  available, at start, never a silent run without the limit.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

#: Where the kernel lists this process's cgroups; the ``0::`` line is its cgroup v2 path.
_SELF_CGROUP = "/proc/self/cgroup"
_MOUNTS = "/proc/self/mounts"

#: Interface file of a limit -> the controller that provides it.
CONTROLLER_OF: Mapping[str, str] = {"memory.max": "memory", "pids.max": "pids", "cpu.max": "cpu"}

#: The period written to cpu.max, in microseconds: the kernel's default.
CPU_PERIOD_US = 100_000


class CgroupError(Exception):
    """A cgroup could not be made, joined or given a limit; the message says which and why."""


def _read(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def _write(path: str, text: str) -> None:
    # O_NOFOLLOW: a cgroupfs has no symlinks; a configured parent outside one must not plant any.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def own_cgroup() -> str | None:
    """This process's cgroup v2 directory (mount point + path), or None without a cgroup2 mount."""
    try:
        lines = _read(_SELF_CGROUP).splitlines()
        mounts = _read(_MOUNTS).splitlines()
    except OSError:
        return None
    relative = next((line[3:] for line in lines if line.startswith("0::")), None)
    mount = next(
        (fields[1] for fields in map(str.split, mounts) if len(fields) > 2 and fields[2] == "cgroup2"), None
    )
    if relative is None or mount is None:
        return None
    return os.path.join(mount, relative.lstrip("/")).rstrip("/") or "/"


def instance_name(state_dir: str) -> str:
    """The instance directory's name for a state directory (stable, and distinct between two of them)."""
    return "state-" + hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Cgroup:
    """One run's or one command's cgroup, by its directory."""

    path: str

    def create(self, limits: Mapping[str, str] | None = None) -> None:
        """Make the directory (an existing one is reused) and write the limits (interface file -> value).

        Raises:
            CgroupError: the directory cannot be made or a limit written.
        """
        try:
            os.mkdir(self.path, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            raise CgroupError(f"cannot make cgroup {self.path}: {exc.strerror}") from None
        for name, value in (limits or {}).items():
            try:
                _write(os.path.join(self.path, name), value)
            except OSError as exc:
                raise CgroupError(f"cannot set {name} = {value} in {self.path}: {exc.strerror}") from None

    def pids(self) -> list[int]:
        """The processes in it now ([] when it is gone)."""
        try:
            return [int(pid) for pid in _read(os.path.join(self.path, "cgroup.procs")).split()]
        except OSError:
            return []

    def populated(self) -> bool:
        """True while any process is in it (``cgroup.events``; zombies do not count)."""
        try:
            events = _read(os.path.join(self.path, "cgroup.events"))
        except OSError:
            return False  # removed: nothing can be in it
        return "populated 1" in events

    def kill(self) -> None:
        """SIGKILL every process in it, and those forked meanwhile (``cgroup.kill``; else one by one)."""
        try:
            _write(os.path.join(self.path, "cgroup.kill"), "1")
            return
        except FileNotFoundError:
            pass  # a kernel before 5.14: one by one, again on every look until it is empty
        except OSError:
            return  # gone already
        self.signal(signal.SIGKILL)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every process in it, each checked to be a member still when signalled.

        A pid read from ``cgroup.procs`` may be reused before it is signalled; a pidfd opened
        before a second read that still lists the pid names that member, or a dead process.
        """
        fds = {}
        try:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    fds[pid] = os.pidfd_open(pid)
            members = set(self.pids())
            for pid, fd in fds.items():
                if pid in members:
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(fd, sig)
        finally:
            for fd in fds.values():
                os.close(fd)

    def remove(self) -> bool:
        """Remove the directory if it is empty; True when it is gone."""
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True


@contextlib.contextmanager
def inside(cgroup: Cgroup, home: str) -> Iterator[None]:
    """Move this process into ``cgroup`` for the block (what it spawns there is born inside), then home.

    Raises:
        CgroupError: it could not move in (nothing was spawned then).
    """
    try:
        _write(os.path.join(cgroup.path, "cgroup.procs"), "0")
    except OSError as exc:
        raise CgroupError(f"cannot join cgroup {cgroup.path}: {exc.strerror}") from None
    try:
        yield
    finally:
        # Back at once: staying would put this process in the run's cgroup.kill. Retried, since
        # the only failure seen is a transient EBUSY/EAGAIN from a concurrent migration.
        for attempt in range(3):
            try:
                _write(os.path.join(home, "cgroup.procs"), "0")
                break
            except OSError as exc:
                if attempt == 2 or exc.errno not in (errno.EBUSY, errno.EAGAIN, errno.EINTR):
                    raise CgroupError(f"cannot go back to cgroup {home}: {exc.strerror}") from None


@dataclass(frozen=True, slots=True)
class CgroupTree:
    """Where this daemon's runs and commands get their cgroups: ``<parent>/<name>/<instance>``."""

    root: str
    #: This process's own cgroup, where ``inside`` returns to.
    home: str

    def run(self, task_id: int) -> Cgroup:
        return Cgroup(os.path.join(self.root, f"task-{task_id}"))

    def command(self, token: str) -> Cgroup:
        return Cgroup(os.path.join(self.root, f"command-{token}"))

    def stale_commands(self) -> list[Cgroup]:
        """Command cgroups left by an earlier daemon of this state directory (commands never outlive one)."""
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        return [Cgroup(os.path.join(self.root, name)) for name in names if name.startswith("command-")]


def check_controllers(directory: str, controllers: set[str]) -> set[str]:
    """The controllers of ``controllers`` not yet handed down from ``directory``.

    Raises:
        CgroupError: one is not available in ``directory`` at all.
    """
    try:
        available = set(_read(os.path.join(directory, "cgroup.controllers")).split())
        enabled = set(_read(os.path.join(directory, "cgroup.subtree_control")).split())
    except OSError as exc:
        raise CgroupError(f"cannot read the controllers of {directory}: {exc.strerror}") from None
    missing = controllers - available
    if missing:
        raise CgroupError(
            f"the {', '.join(sorted(missing))} controller is not available in {directory} "
            f"(available: {', '.join(sorted(available)) or 'none'}); delegate it to this cgroup "
            "(systemd: Delegate=yes; a cgroup v1 controller cannot be used), or remove the limit"
        )
    return controllers - enabled


def _enable(directory: str, controllers: set[str]) -> None:
    """Hand ``controllers`` down from ``directory`` to its children (``cgroup.subtree_control``)."""
    if not controllers:
        return
    wanted = check_controllers(directory, controllers)
    if wanted:
        try:
            _write(
                os.path.join(directory, "cgroup.subtree_control"), " ".join(f"+{c}" for c in sorted(wanted))
            )
        except OSError as exc:
            raise CgroupError(
                f"cannot enable {', '.join(sorted(wanted))} in {directory}/cgroup.subtree_control: {exc.strerror} "
                "(a cgroup that holds processes cannot hand controllers down, except the root one)"
            ) from None


def open_tree(
    parent: str | None, name: str, state_dir: str, controllers: frozenset[str] | set[str] = frozenset()
) -> CgroupTree:
    """Make ``<parent>/<name>/<instance>``, with ``controllers`` handed down to its children.

    Args:
        parent: a cgroup2 directory; None: this process's own cgroup.
        name: the subtree's name under the parent.
        state_dir: names the instance (``instance_name``).
        controllers: controllers the limits need (``CONTROLLER_OF``).

    Raises:
        CgroupError: no cgroup2 mount, or the tree cannot be made here, or a controller is missing.
    """
    home = own_cgroup()
    if home is None:
        raise CgroupError("no cgroup2 hierarchy is mounted (/proc/self/mounts has no cgroup2 line)")
    base = parent if parent is not None else home
    if not os.path.isfile(os.path.join(base, "cgroup.procs")):
        raise CgroupError(f"{base} is not a cgroup2 directory (it has no cgroup.procs)")
    if not os.access(os.path.join(base, "cgroup.procs"), os.W_OK) or not os.access(base, os.W_OK):
        raise CgroupError(f"cgroup {base} is not writable by uid {os.geteuid()}")
    levels = [base, os.path.join(base, name), os.path.join(base, name, instance_name(state_dir))]
    for above, directory in zip(levels, levels[1:]):
        _enable(above, set(controllers))
        Cgroup(directory).create()
    _enable(levels[-1], set(controllers))
    return CgroupTree(root=levels[-1], home=home)


def limit_files(memory_max: int | None, pids_max: int | None, cpu_max: float | None) -> dict[str, str]:
    """The interface files and values for a type's limits (unset ones left out)."""
    files = {}
    if memory_max is not None:
        files["memory.max"] = str(memory_max)
    if pids_max is not None:
        files["pids.max"] = str(pids_max)
    if cpu_max is not None:
        files["cpu.max"] = f"{max(1000, round(cpu_max * CPU_PERIOD_US))} {CPU_PERIOD_US}"
    return files
