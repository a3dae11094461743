"""Binding the daemon's listening sockets before any server starts.

Rules:
- Sockets are bound here, up front, so a bad address fails start-up with a
  clear message before anything else runs, and servers only ever receive
  ready sockets (the same path systemd socket activation will take).
- A Unix socket is created with a restrictive umask and then given its
  configured mode and group: there is no moment at which it is more open
  than configured.
- An existing path is removed only if it is a socket nobody answers on
  (a stale one); a live daemon or a non-socket file stops start-up.
"""

from __future__ import annotations

import errno
import grp
import ipaddress
import os
import socket
from pathlib import Path

from pymgr._unixsocket import clear_stale_socket

#: Pending connections the kernel queues per listener: web back ends connect in bursts (uvicorn's default too).
BACKLOG = 2048


class ListenerError(Exception):
    """A listener cannot be bound; the message says which and why."""


def _remove_stale_socket(path: Path) -> None:
    in_the_way = clear_stale_socket(path)
    if in_the_way == "a live socket":
        raise ListenerError(f"another daemon is already listening on {path}; stop it first")
    if in_the_way is not None:
        raise ListenerError(f"{path} exists and is not a socket; refusing to remove it")


def bind_unix(path: Path, mode: int, group: str | None = None) -> socket.socket:
    """A listening Unix socket at ``path`` with the given mode and group.

    Raises:
        ListenerError: the path is taken, the group is unknown, or bind failed.
    """
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ListenerError(f"socket_group {group!r} is not a group on this host") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ListenerError(f"cannot create the directory of Unix socket {path}: {exc.strerror}") from None
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ListenerError(f"cannot bind Unix socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    os.chown(path, -1, gid)
    os.chmod(path, mode)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def bind_tcp(address: str) -> socket.socket:
    """A listening TCP socket on ``"host:port"`` (port 0 picks a free one).

    Raises:
        ListenerError: the address cannot be bound.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        hint = " (is another daemon running?)" if exc.errno == errno.EADDRINUSE else ""
        raise ListenerError(f"cannot bind TCP {address}: {exc.strerror}{hint}") from None
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def unix_path_of(sock: socket.socket) -> Path | None:
    """The filesystem path of a bound Unix socket, if it is one."""
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        if isinstance(name, str) and name and not name.startswith("\0"):
            return Path(name)
    return None


def bind_host(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket on the first address ``host`` resolves to (at start-up: a blocking lookup is fine).

    Raises:
        OSError: the host does not resolve or the address cannot be bound.
    """
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return socket.create_server(address, family=family, backlog=backlog)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (a host name may resolve to anything: False)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" for every interface
        return False
