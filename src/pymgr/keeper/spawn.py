"""Starting one process (a keeper's run, a daemon's command): session, limits, identity, output, exec.

Rules:
- No shell and no ``preexec_fn``. The process gets its own session
  (``setsid``), stdin ``/dev/null``, stdout and stderr on the descriptors
  given (a run's output pipe; a command's two pipes), exactly the
  environment it is given, the working directory, the resource limits and
  the user, group and supplementary groups asked for; every other file
  descriptor is closed, except ``pass_fds`` (checked paths the process
  names as ``/proc/self/fd/N``): those reach it at the same number on all
  three ways, made inheritable by the caller for the length of the spawn.
- Three ways, one result. The common case (no rlimits, no user or group
  switch, a program path with a "/") is ``os.posix_spawn``: glibc's
  clone(CLONE_VM|CLONE_VFORK) with the session, the descriptors and the
  signal dispositions set by the C library, ~0.2 ms a spawn here against
  ~0.35 ms for ``subprocess.Popen`` (an error pipe, a ``/dev/null`` open
  and Python bookkeeping more). It cannot change the working directory, so
  the single-threaded keeper changes its own around the call and goes back
  at once; and it closes no descriptor, so it is used only once
  ``private_descriptors()`` made every descriptor close-on-exec (the
  keeper does at start-up; Python creates all later ones so). One
  difference remains: glibc's posix_spawn leaves its two internal signals
  (32 and 33) ignored in the child, which glibc takes back when the program
  uses them (threads, ``pthread_cancel``). A user or group switch or a bare program name (looked up along
  the process's own PATH) goes through ``subprocess.Popen`` (vfork too).
  With rlimits, which neither can set without a ``preexec_fn``, the keeper
  forks itself (it is single-threaded, so the child may run Python safely)
  and the child calls ``setrlimit`` before it drops privileges and execs.
- The daemon is multi-threaded: it never calls ``private_descriptors`` and
  its commands have no rlimits, so they always take the Popen path (no
  working directory changed under other threads, no fork of a threaded
  process). Their identity is resolved at start-up and passed in.
- Order in the child, as subprocess does it: chdir, setsid, setrlimit
  (before the privilege drop, which may forbid raising a limit), setgroups,
  setgid, setuid (last: it gives up the right to do the rest), every
  catchable signal back to its default and an empty signal mask, exec.
- Signals: a process starts with every disposition at its default and
  nothing blocked, whatever its parent inherited (``nohup``, ``tmux``).
  posix_spawn and the forked child set that themselves; Popen resets only
  what Python ignores, so the keeper and the daemon first give up what they
  inherited (``reset_inherited_signals``).
- A failure anywhere before exec is a ``SpawnError`` ("spawn failed:
  <strerror>: '<file>'"); the forked child reports it through a
  close-on-exec pipe it writes its step and errno into (empty: exec worked).
- Switching user needs root: asking for another user or group while not
  root fails before anything is forked, saying so.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

from pymgr.keeper.runas import RunAs, resolve_run_as
from pymgr.protocol.keeper import Spawn

#: rlimit names in the config and the spawn request, and their resources.
RLIMITS: Mapping[str, int] = {
    "nofile": resource.RLIMIT_NOFILE,
    "as": resource.RLIMIT_AS,
    "cpu": resource.RLIMIT_CPU,
    "nproc": resource.RLIMIT_NPROC,
}

#: fs.nr_open by default: no descriptor number reaches it (and all the keeper's are close-on-exec anyway).
_NR_OPEN_MAX = 1 << 20

#: Exit code of a forked child whose exec failed (the shell's "not executable").
_EXEC_FAILED = 127

#: The first glibc whose posix_spawn can start a new session (POSIX_SPAWN_SETSID).
_SETSID_GLIBC = (2, 26)

#: Every signal a process can catch or ignore (valid_signals() leaves out glibc's internal 32 and 33).
CATCHABLE_SIGNALS = tuple(sorted(set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}))

#: Signals Python itself ignores at start-up; Popen (``restore_signals``) and posix_spawn put them back.
_PYTHON_IGNORES = frozenset({signal.SIGPIPE, signal.SIGXFSZ})


class _PosixSpawn:
    """Whether the posix_spawn path is on (see ``private_descriptors``), and the children's stdin."""

    enabled = False
    #: ``/dev/null``, opened once, close-on-exec (the dup2 onto fd 0 in the child clears that).
    devnull = -1


class SpawnError(Exception):
    """The process could not be started; the message is the run's ``error``."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        #: Why, in the system's words when it refused ("No such file or directory"), else the message.
        self.reason = reason or message


@dataclass(frozen=True, slots=True)
class SpawnSpec:
    """What to start, as the daemon asked for it."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    user: str | None = None
    group: str | None = None
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Descriptors the process gets at the same number (inheritable, all above stderr).
    pass_fds: tuple[int, ...] = ()

    @classmethod
    def from_request(cls, request: Spawn) -> SpawnSpec:
        """Build from a spawn request (typed by its decoder), checking the rlimit names.

        Raises:
            SpawnError: an rlimit the keeper does not know.
        """
        for name, value in request.rlimits.items():
            if name not in RLIMITS:
                raise SpawnError(
                    f"spawn failed: bad rlimit {name!r}: {list(value)!r}; known: {', '.join(RLIMITS)}"
                )
        return cls(
            argv=list(request.argv),
            env=dict(request.env),
            cwd=request.cwd,
            user=request.user,
            group=request.group,
            rlimits=dict(request.rlimits),
        )


def private_descriptors() -> None:
    """Make every descriptor above stderr close-on-exec, then use posix_spawn (the keeper calls it once).

    posix_spawn closes nothing itself: this is what keeps "every other fd
    closed" true for it. Python creates every later descriptor
    close-on-exec (PEP 446), and the keeper makes none inheritable.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the descriptor listdir itself used, closed since
    version = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    numbers = tuple(int(part) for part in version.removeprefix("glibc ").split(".")[:2] if part.isdigit())
    if hasattr(os, "posix_spawn") and version.startswith("glibc ") and numbers >= _SETSID_GLIBC:
        if _PosixSpawn.devnull < 0:
            _PosixSpawn.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        _PosixSpawn.enabled = True


def reset_inherited_signals() -> list[str]:
    """Give up every ignored disposition and blocked signal this process inherited; returns their names.

    Python's own (SIGPIPE, SIGXFSZ) stay: Popen and posix_spawn reset those
    in the child. Call it from the main thread, before any child is started.
    """
    reset = []
    for sig in CATCHABLE_SIGNALS:
        if sig not in _PYTHON_IGNORES and signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
            reset.append(_signal_name(sig))
    blocked = signal.pthread_sigmask(signal.SIG_SETMASK, ())
    reset += (f"{_signal_name(sig)} (blocked)" for sig in sorted(blocked))
    return reset


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"  # a real-time signal: no name


def _failure(exc: OSError) -> SpawnError:
    if exc.filename is not None:
        return SpawnError(f"spawn failed: {exc.strerror}: {os.fsdecode(exc.filename)!r}", exc.strerror)
    return SpawnError(f"spawn failed: {exc}", exc.strerror)


def spawn(
    spec: SpawnSpec, output_fd: int, *, stderr_fd: int | None = None, run_as: RunAs | None = None
) -> tuple[int, subprocess.Popen[bytes] | None]:
    """Start the process; returns its pid and the Popen that started it (None when forked here).

    The caller owns the child from here: it must reap it (and set the
    Popen's ``returncode`` when it does, so Popen never reaps it too).

    Args:
        output_fd: the process's stdout, and its stderr unless ``stderr_fd`` is given.
        run_as: whom it runs as, resolved already (None: ``spec.user`` and ``spec.group``).

    Raises:
        SpawnError: it could not be started (the message says why).
    """
    identity = run_as
    if identity is None:
        try:
            identity = resolve_run_as(spec.user, spec.group)
        except (LookupError, PermissionError) as exc:
            raise SpawnError(f"spawn failed: {exc}") from None
    if stderr_fd is None:
        stderr_fd = output_fd
    if spec.rlimits:
        return _fork_exec(spec, (output_fd, stderr_fd), identity), None
    if _PosixSpawn.enabled and identity == RunAs() and "/" in spec.argv[0]:
        return _posix_spawn(spec, (output_fd, stderr_fd)), None
    try:
        popen = subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=output_fd,
            stderr=stderr_fd,
            cwd=spec.cwd,
            env=spec.env,
            close_fds=True,
            pass_fds=spec.pass_fds,
            start_new_session=True,
            user=identity.uid,
            group=identity.gid,
            extra_groups=list(identity.groups) if identity.groups is not None else None,
        )
    except OSError as exc:
        raise _failure(exc) from None
    return popen.pid, popen


def _posix_spawn(spec: SpawnSpec, output: tuple[int, int]) -> int:
    """The fast path (see the module rules): posix_spawn, in ``spec.cwd`` for the length of the call."""
    actions = [
        (os.POSIX_SPAWN_DUP2, _PosixSpawn.devnull, 0),
        (os.POSIX_SPAWN_DUP2, output[0], 1),
        (os.POSIX_SPAWN_DUP2, output[1], 2),
    ]
    previous = None
    try:
        if spec.cwd is not None:
            previous = os.getcwd()
            os.chdir(spec.cwd)
        return os.posix_spawn(
            spec.argv[0],
            spec.argv,
            spec.env,
            file_actions=actions,
            setsid=True,
            setsigdef=CATCHABLE_SIGNALS,
            setsigmask=(),
        )
    except OSError as exc:
        raise _failure(exc) from None
    finally:
        if previous is not None:
            os.chdir(previous)


def _exec_candidates(argv0: str, env: Mapping[str, str]) -> list[bytes]:
    """Where exec looks for the program: as given with a "/", else along PATH (its own, or /bin:/usr/bin)."""
    if "/" in argv0:
        return [os.fsencode(argv0)]
    return [os.fsencode(os.path.join(directory, argv0)) for directory in os.get_exec_path(dict(env))]


def _fork_exec(spec: SpawnSpec, output: tuple[int, int], identity: RunAs) -> int:
    candidates = _exec_candidates(spec.argv[0], spec.env)
    # No descriptor of the keeper is at or above its hard limit (which the
    # kernel caps at fs.nr_open, 2**20 by default): close up to there.
    max_fd = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if max_fd == resource.RLIM_INFINITY or max_fd > _NR_OPEN_MAX:
        max_fd = _NR_OPEN_MAX
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    error_read, error_write = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; its outcome is checked through the pipe
            _child(spec, candidates, identity, (devnull, *output, error_write, max_fd))
        os.close(error_write)
        error_write = -1
        report = b""
        while chunk := os.read(error_read, 256):
            report += chunk
    finally:
        os.close(devnull)
        os.close(error_read)
        if error_write >= 0:
            os.close(error_write)
    if not report:
        return pid
    os.waitpid(pid, 0)  # it exited with _EXEC_FAILED right after writing
    step, _, number = report.decode("ascii", "replace").partition(":")
    code = int(number) if number.isdigit() else errno.EINVAL
    filename = {"exec": spec.argv[0], "chdir": spec.cwd}.get(step)
    reason = os.strerror(code) if filename is not None else f"{step}: {os.strerror(code)}"
    raise _failure(OSError(code, reason, filename))


def _close_all_but(kept: set[int], max_fd: int) -> None:  # pragma: no cover - the forked child
    """Close every descriptor from 3 below ``max_fd`` except ``kept``."""
    start = 3
    for fd in sorted(kept):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, max_fd)


def _child(
    spec: SpawnSpec, candidates: list[bytes], identity: RunAs, fds: tuple[int, int, int, int, int]
) -> None:  # pragma: no cover - runs in the forked child only
    devnull, stdout_fd, stderr_fd, error_fd, max_fd = fds
    step = "setup"
    try:
        if spec.cwd is not None:
            step = "chdir"
            os.chdir(spec.cwd)
        step = "setsid"
        os.setsid()
        step = "setrlimit"
        for name, limits in spec.rlimits.items():
            resource.setrlimit(RLIMITS[name], limits)
        step = "setgroups"
        if identity.groups is not None:
            os.setgroups(list(identity.groups))
        step = "setgid"
        if identity.gid is not None:
            os.setgid(identity.gid)
        step = "setuid"
        if identity.uid is not None:
            os.setuid(identity.uid)
        step = "dup2"
        os.dup2(devnull, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        _close_all_but({error_fd, *spec.pass_fds}, max_fd)
        for sig in CATCHABLE_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        step = "exec"
        env = {os.fsencode(k): os.fsencode(v) for k, v in spec.env.items()}
        first: OSError | None = None
        for path in candidates:
            try:
                os.execve(path, spec.argv, env)
            except OSError as exc:
                if first is None or (first.errno == errno.ENOENT and exc.errno != errno.ENOENT):
                    first = exc
        raise first or OSError(errno.ENOENT, "no candidates")
    except BaseException as exc:  # report whatever it was, then never return into the keeper's code
        code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
        os.write(error_fd, f"{step}:{code}".encode())
    finally:
        os._exit(_EXEC_FAILED)
