"""Identity from the kernel's peer credentials of a Unix socket.

``SO_PEERCRED`` gives the uid, gid and pid the peer had when it connected;
the kernel fills it in, so a caller cannot lie about it. It is read once per
connection. Names are resolved through the system's user and group database
(``pwd``, ``getgrouplist``: supplementary groups count), and kept per caller
because a busy web back end connects with the same uid all day.

Rules:
- Names are kept for at most ``[auth] groups_max_age_s`` and dropped on
  SIGHUP (``forget_names``): removing a user from a group takes away what the
  group allowed within that age, or at once with a reload. The age runs for
  the whole cache at once, so a caller's names are never older than it.
- A request on a kept-alive connection asks ``current`` for its caller: the
  same object while the names are fresh (every cache keyed by it keeps
  hitting), a newly resolved one once they were dropped, so a connection
  held open for hours does not keep stale groups either.
- One Identity object per (pid, uid, gid) while fresh: it is frozen, so
  sharing it is safe, and it is what the caches downstream key on.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from pymgr.core.identity import Identity

__all__ = [
    "DEFAULT_NAMES_MAX_AGE_S",
    "current",
    "forget_names",
    "identity_from_peercred",
    "set_names_max_age",
]

_PEERCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }

#: Seconds names are kept by default: a minute bounds how long a removed membership keeps working, at
#: one getgrouplist() per caller per minute (a few hundred microseconds with a local /etc/group).
DEFAULT_NAMES_MAX_AGE_S = 60.0
#: Distinct callers (pid, uid, gid) kept at once: a web back end's workers connect again and again.
_IDENTITY_CACHE_SIZE = 1024


def _group_names(gids: list[int]) -> tuple[str, ...]:
    names = []
    for gid in dict.fromkeys(gids):
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.append(str(gid))
    return tuple(names)


def _resolve(uid: int, gid: int) -> tuple[str | None, tuple[str, ...]]:
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        return None, _group_names([gid])
    return user, _group_names(os.getgrouplist(user, gid))


class _Callers:
    """Identity per (pid, uid, gid), all dropped together after ``max_age_s`` or on ``clear``."""

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._by_caller: dict[tuple[int, int, int], Identity] = {}
        self._names: dict[tuple[int, int], tuple[str | None, tuple[str, ...]]] = {}
        self._expires_at = float("-inf")

    def clear(self) -> None:
        self._by_caller.clear()
        self._names.clear()
        self._expires_at = float("-inf")

    def get(self, pid: int, uid: int, gid: int) -> Identity:
        now = self._clock()
        if now >= self._expires_at:
            self.clear()
            self._expires_at = now + self.max_age_s
        key = (pid, uid, gid)
        identity = self._by_caller.get(key)
        if identity is None:
            names = self._names.get((uid, gid))
            if names is None:
                names = self._names[(uid, gid)] = _resolve(uid, gid)
            if len(self._by_caller) >= _IDENTITY_CACHE_SIZE:
                self._by_caller.clear()  # bounded; the names stay (they are per uid, a handful)
            identity = Identity(transport="unix", uid=uid, gid=gid, pid=pid, user=names[0], groups=names[1])
            self._by_caller[key] = identity
        return identity


_CALLERS = _Callers(DEFAULT_NAMES_MAX_AGE_S)


def identity_from_peercred(sock: Any) -> Identity | None:
    """The identity of a Unix-socket peer, or None for other sockets.

    ``sock`` is a socket or the socket-like object a transport exposes.
    """
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return _CALLERS.get(*_PEERCRED.unpack(raw))


def current(identity: Identity) -> Identity:
    """The Unix caller ``identity`` with names no older than the age: itself while they are fresh."""
    return _CALLERS.get(identity.pid, identity.uid, identity.gid)  # type: ignore[arg-type]  # a unix identity has all three


def forget_names() -> None:
    """Drop every kept name (SIGHUP): the next request of each caller reads the user and group database again."""
    _CALLERS.clear()


def set_names_max_age(seconds: float) -> None:
    """How long names are kept (``[auth] groups_max_age_s``).

    Raises:
        ValueError: ``seconds`` is not positive.
    """
    if not seconds > 0:
        raise ValueError(f"groups_max_age_s must be positive, not {seconds!r}")
    _CALLERS.max_age_s = seconds
    _CALLERS.clear()
