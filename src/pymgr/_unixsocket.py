"""What the daemon and the console both do before binding a Unix socket: clear the path of a stale one.

A standard-library leaf (tests/test_layers.py lets the console import it): the daemon's listeners
(``transport/listeners.py``) and the console's (``console/listener.py``) each word their own refusal.

Rules:
- A socket nobody answers on (left by a process that died) is removed.
- Anything else stays: a live socket, a symlink (never followed: ``lstat``), any other file. What is
  in the way is returned, for the caller's refusal.
"""

from __future__ import annotations

import socket
import stat
from pathlib import Path


def clear_stale_socket(path: Path) -> str | None:
    """Remove a stale socket at ``path``; None when the path is free, else what is in the way:
    ``"a live socket"``, ``"a symlink"`` or ``"not a socket"``."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "a symlink"
    if not stat.S_ISSOCK(st.st_mode):
        return "not a socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # stale: its process died
            return None
    return "a live socket"
