"""The console's Unix socket (``listen = "unix:PATH"``): bound before the console leaves root, so that
its owner, group and mode come out as configured, and removed when it stops.

Rules:
- Born with its mode: bound under the umask that leaves exactly ``listen_mode``; its owner and group
  are set with lchown (never through a symlink) before it listens, so that no one connects to a
  socket that is not yet as configured.
- A path in the way: a socket nobody answers on (left by a console that died) is removed; a live
  socket, a symlink (never followed) or any other file stops start-up with the reason.
- At exit the file is removed only while it is still the one this console bound (same inode): a
  socket another console bound since is left alone.
- Written by hand: uvicorn's ``uds=`` makes the socket 0666 and follows a symlink in the way, and
  the daemon's own binding (``pymgr.transport``) is out of the console's reach (tests/test_layers.py);
  clearing a stale socket is the leaf both share (``pymgr._unixsocket``).
"""

from __future__ import annotations

import grp
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from pymgr._unixsocket import clear_stale_socket
from pymgr.console.config import ConsoleConfigError

log = logging.getLogger("pymgr.console")

#: Connections the kernel queues for the proxy (uvicorn's default too).
BACKLOG = 2048


class ListenError(ConsoleConfigError):
    """The console's Unix socket cannot be bound as configured; the message says why."""


@dataclass(frozen=True)
class UnixListener:
    """A bound, listening Unix socket and the file it is (to remove that one file at exit)."""

    sock: socket.socket
    path: Path
    inode: tuple[int, int]

    def close(self) -> None:
        """Close the socket and remove its file, if it is still this socket's."""
        self.sock.close()
        try:
            st = self.path.lstat()
            if (st.st_dev, st.st_ino) == self.inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove the console's socket %s: %s", self.path, exc.strerror)


def group_id(group: str) -> int:
    """The number of ``group`` (a name or a number).

    Raises:
        ListenError: no such group on this host.
    """
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ListenError(f"listen_group {group!r} is not a group on this host") from None


def _clear(path: Path) -> None:
    """Remove a stale socket at ``path``; refuse anything else in the way."""
    in_the_way = clear_stale_socket(path)
    if in_the_way == "a live socket":
        raise ListenError(f"something already listens on {path}; stop it first")
    if in_the_way is not None:
        raise ListenError(f"{path} exists and is {in_the_way}; refusing to remove it (listen = unix:PATH)")


def bind_unix(path: Path, mode: int, owner: int = -1, group: int = -1) -> UnixListener:
    """A listening Unix socket at ``path``: ``mode``, owned by ``owner``:``group`` (-1: as created).

    Raises:
        ListenError: the directory is missing, the path is taken, or the owner/group cannot be set.
    """
    if not path.parent.is_dir():
        raise ListenError(f"the socket's directory {path.parent} does not exist (listen = unix:PATH)")
    _clear(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot bind the Unix socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    st = path.lstat()
    listener = UnixListener(sock, path, (st.st_dev, st.st_ino))
    try:
        if (owner, group) != (-1, -1):
            os.chown(path, owner, group, follow_symlinks=False)
    except OSError as exc:
        listener.close()
        raise ListenError(
            f"cannot give the socket {path} to group {group}: {exc.strerror} (the console's user must be "
            "a member of listen_group, or the console started as root)"
        ) from None
    sock.listen(BACKLOG)
    return listener
