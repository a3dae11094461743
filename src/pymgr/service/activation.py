"""Socket activation: listening sockets handed over by systemd (``LISTEN_FDS``).

systemd (or ``systemd-socket-activate``) binds the sockets, starts the
daemon with them open from fd 3 on, and names them in ``LISTEN_FDNAMES``
(``FileDescriptorName=`` in the socket unit). Written by hand for the same
reason as ``sdnotify``: the protocol is three environment variables, and
the libraries that read them need libsystemd at build time.

Names, and which configured listener each one replaces:

- ``http``: ``[http] unix_socket`` (the generated ``pymgr.socket`` uses it);
- ``http-tcp``: ``[http] tcp``;
- ``legacy``: the ``[legacy]`` listener (TCP; one socket at most).

Rules:
- ``LISTEN_PID`` must be this process, else the variables were inherited
  from someone else and are ignored (sd_listen_fds(3)).
- Sockets without a name (no ``LISTEN_FDNAMES``, or systemd's ``unknown``)
  serve HTTP, as ``http``. Any other name stops start-up with a message
  listing the known ones: a socket nobody serves is a misconfiguration.
- Each fd must be a listening stream socket; it is made non-blocking and
  close-on-exec, so no task inherits it.
- Reading removes ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` from
  the environment, so nothing the daemon starts takes the fds as its own.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping

from pymgr.config import Config

#: The first passed fd: 0-2 are stdin, stdout and stderr (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3

HTTP = "http"
HTTP_TCP = "http-tcp"
LEGACY = "legacy"
#: Every name a passed socket may carry.
NAMES = (HTTP, HTTP_TCP, LEGACY)

#: Names systemd gives a socket whose unit sets no FileDescriptorName=.
_UNNAMED = ("", "unknown")

#: Most fds taken from LISTEN_FDS: far more than pymgr has listeners, and a
#: bound on a corrupt environment (systemd itself caps at 4096 per unit).
MAX_FDS = 64


class ActivationError(Exception):
    """The passed sockets do not fit the config; the message says which and why."""


def listen_fds(
    env: MutableMapping[str, str] = os.environ, pid: int | None = None, first_fd: int = LISTEN_FDS_START
) -> dict[str, list[socket.socket]]:
    """The sockets passed to this process, by listener name; {} when none were.

    Args:
        env: the environment (the LISTEN_* variables are taken out of it).
        pid: this process's pid (tests pass another).
        first_fd: the first passed fd; systemd always uses 3 (tests pass others).

    Raises:
        ActivationError: a malformed variable, an unknown name, or an fd that
            is not a listening stream socket.
    """
    listen_pid = env.pop("LISTEN_PID", None)
    count = env.pop("LISTEN_FDS", None)
    names_var = env.pop("LISTEN_FDNAMES", None)
    if listen_pid is None or count is None:
        return {}
    if listen_pid != str(pid if pid is not None else os.getpid()):
        return {}
    if not count.isdigit() or not 0 < int(count) <= MAX_FDS:
        raise ActivationError(f"LISTEN_FDS must be a number of sockets from 1 to {MAX_FDS}, not {count!r}")
    n = int(count)
    names = names_var.split(":") if names_var is not None else [""] * n
    if len(names) != n:
        raise ActivationError(
            f"LISTEN_FDNAMES names {len(names)} sockets but LISTEN_FDS is {n}: {names_var!r}"
        )
    passed: dict[str, list[socket.socket]] = {}
    for offset, raw_name in enumerate(names):
        name = HTTP if raw_name in _UNNAMED else raw_name
        fd = first_fd + offset
        if name not in NAMES:
            raise ActivationError(
                f"passed socket fd {fd} is named {raw_name!r}; pymgr serves {', '.join(NAMES)}: "
                "set FileDescriptorName= in the socket unit to one of them"
            )
        passed.setdefault(name, []).append(_adopt(fd, name))
    return passed


def _adopt(fd: int, name: str) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ActivationError(f"passed fd {fd} ({name}) is not a socket: {exc.strerror}") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ActivationError(f"passed fd {fd} ({name}) is not a listening stream socket (ListenStream=)")
    sock.setblocking(False)
    sock.set_inheritable(False)
    return sock


def check_against(config: Config, passed: Mapping[str, list[socket.socket]]) -> None:
    """Refuse passed sockets the config has no listener for.

    Raises:
        ActivationError: naming the socket and the config key to set.
    """
    legacy = passed.get(LEGACY, [])
    if legacy and not config.legacy.enabled:
        raise ActivationError(
            "a socket named 'legacy' was passed but [legacy] enabled = false; enable it or drop the socket"
        )
    if len(legacy) > 1:
        raise ActivationError(
            f"{len(legacy)} sockets named 'legacy' were passed; the legacy listener takes one"
        )
    for sock in legacy:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise ActivationError("the socket named 'legacy' must be TCP (ListenStream=HOST:PORT)")


def close_all(passed: Mapping[str, list[socket.socket]]) -> None:
    """Close our copies of passed sockets (the service manager keeps its own)."""
    for socks in passed.values():
        for sock in socks:
            sock.close()
