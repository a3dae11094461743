"""Setting up the keeper process: its lock, its listening socket, the process itself; and ``main``.

Rules:
- The socket is bound relative to the run directory (so no path is too
  long for ``sun_path``), with a umask that makes it 0600 from birth, then
  chmod 0600 again; a stale socket file is removed first (the caller holds
  the keeper lock, so no live keeper owns it).
- The process becomes a child subreaper (orphaned descendants of runs are
  re-parented to it and reaped, never left as zombies), raises its soft
  descriptor limit to the hard one (two descriptors per run), works in "/"
  and creates files with umask 027.
- One keeper per state directory: ``main`` holds ``<run_dir>/keeper.lock``
  (flock); a second one exits at once, leaving the first to serve.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import resource
import socket
import sys

from pymgr._fsguard import ensure_private_dir, open_private
from pymgr.keeper.loop import Keeper
from pymgr.keeper.spawn import private_descriptors, reset_inherited_signals

#: prctl(2) option that makes this process the reaper of orphaned descendants.
PR_SET_CHILD_SUBREAPER = 36

#: Backlog of the listening socket: one daemon, and a few reconnects.
_BACKLOG = 8


def listen(run_dir: str) -> socket.socket:
    """Bind ``keeper.sock`` in ``run_dir`` (relative to it: no path length limit), mode 0600."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.getcwd()
    os.chdir(run_dir)
    try:
        try:
            os.unlink("keeper.sock")
        except FileNotFoundError:
            pass  # no stale socket: nothing to clear
        old_umask = os.umask(0o177)
        try:
            sock.bind("keeper.sock")
        finally:
            os.umask(old_umask)
        os.chmod("keeper.sock", 0o600)
    finally:
        os.chdir(previous)
    sock.listen(_BACKLOG)
    sock.setblocking(False)
    return sock


def prepare_process() -> None:
    """Subreaper, every descriptor the hard limit allows, "/" as working directory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(
            f"keeper: cannot become a subreaper: {os.strerror(ctypes.get_errno())}",
            file=sys.stderr,
            flush=True,
        )
    os.chdir("/")
    os.umask(0o027)


def _take_lock(run_dir: str) -> int | None:
    """Hold ``<run_dir>/keeper.lock`` for the life of the process; else the exit code (0: another serves)."""
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
    return None  # the descriptor stays open: the lock lasts as long as this process


def main(argv: list[str] | None = None) -> int:
    """``python -m pymgr.keeper``: take the state directory's lock, listen, and serve until idle."""
    parser = argparse.ArgumentParser(prog="python -m pymgr.keeper", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", required=True, help="the daemon's state_dir")
    parser.add_argument("--idle-exit-s", type=float, default=30.0, help="linger this long with nothing to do")
    args = parser.parse_args(argv)
    run_dir = os.path.join(os.path.abspath(args.state_dir), "run")
    refused = _take_lock(run_dir)
    if refused is not None:
        return refused
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
