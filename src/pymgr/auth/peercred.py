"""Identity from the kernel's peer credentials of a Unix socket.

``SO_PEERCRED`` gives the uid, gid and pid the peer had when it connected;
the kernel fills it in, so a caller cannot lie about it. It is read once per
connection. Names are resolved through the system's user and group database
(``pwd``/``grp``), cached per uid because a busy web back end connects with
the same uid all day.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import socket
import struct
from typing import Any

from pymgr.core.identity import Identity

_PEERCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }

#: Distinct uids whose names stay cached; a host has few users that call pymgr.
_NAME_CACHE_SIZE = 256
#: Distinct callers (pid, uid, gid) whose Identity object is reused: a web back end's workers
#: connect again and again, and one object per caller lets every per-identity cache downstream
#: (policy decisions, audit fragment, rate-limit key, all keyed by the object) hit on a new connection.
_IDENTITY_CACHE_SIZE = 1024


@functools.lru_cache(maxsize=_NAME_CACHE_SIZE)
def _names(uid: int, gid: int) -> tuple[str | None, tuple[str, ...]]:
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        return None, _group_names([gid])
    return user, _group_names(os.getgrouplist(user, gid))


def _group_names(gids: list[int]) -> tuple[str, ...]:
    names = []
    for gid in dict.fromkeys(gids):
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.append(str(gid))
    return tuple(names)


def identity_from_peercred(sock: Any) -> Identity | None:
    """The identity of a Unix-socket peer, or None for other sockets.

    ``sock`` is a socket or the socket-like object a transport exposes.
    """
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return _identity(*_PEERCRED.unpack(raw))


@functools.lru_cache(maxsize=_IDENTITY_CACHE_SIZE)
def _identity(pid: int, uid: int, gid: int) -> Identity:
    # A reused pid with the same uid and gid is the same Identity, field for field: sharing the
    # object is safe (an Identity is frozen), and it is what the caches downstream key on.
    user, groups = _names(uid, gid)
    return Identity(transport="unix", uid=uid, gid=gid, pid=pid, user=user, groups=groups)
