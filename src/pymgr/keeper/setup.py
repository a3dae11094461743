"""Setting up the keeper process: its listening socket, and the process itself.

Rules:
- The socket is bound relative to the run directory (so no path is too
  long for ``sun_path``), with a umask that makes it 0600 from birth, then
  chmod 0600 again; a stale socket file is removed first (the caller holds
  the keeper lock, so no live keeper owns it).
- The process becomes a child subreaper (orphaned descendants of runs are
  re-parented to it and reaped, never left as zombies), raises its soft
  descriptor limit to the hard one (two descriptors per run), works in "/"
  and creates files with umask 027.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import ctypes
import os
import resource
import socket
import sys

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
        print(f"keeper: cannot become a subreaper: {os.strerror(ctypes.get_errno())}", file=sys.stderr, flush=True)
    os.chdir("/")
    os.umask(0o027)
