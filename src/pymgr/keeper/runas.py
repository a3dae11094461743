"""Whom a spawned process runs as: a uid, a gid and supplementary groups, resolved from names.

Rules:
- A name or a number for the user and the group, as the config gives them;
  the user brings its primary group and every group it belongs to, a
  ``group`` replaces the primary one.
- Only root can switch: a process that is not root may only ask to stay
  who it is (then nothing is switched, since only root may call
  ``setgroups``).
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RunAs:
    """Whom the process runs as: None everywhere keeps the spawner's own."""

    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] | None = None


def resolve_run_as(user: str | None, group: str | None) -> RunAs:
    """The uid, gid and supplementary groups for a ``user`` and ``group`` (names or numbers).

    Raises:
        LookupError: no such user or group.
        PermissionError: this process is not root and was asked to become someone else.
    """
    if user is None and group is None:
        return RunAs()
    uid = gid = None
    name = None
    if user is not None:
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except (KeyError, OverflowError):
            raise LookupError(f"no such user {user!r}") from None
        uid, gid, name = entry.pw_uid, entry.pw_gid, entry.pw_name
    if group is not None:
        try:
            gid = (grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)).gr_gid
        except (KeyError, OverflowError):
            raise LookupError(f"no such group {group!r}") from None
    euid = os.geteuid()
    if euid != 0:
        if uid in (None, euid) and gid == os.getegid():
            return RunAs()  # already who it should be; and only root may call setgroups
        raise PermissionError(
            f"cannot run as user {user!r} group {group!r}: the keeper runs as uid {euid}, "
            "and only root can switch users"
        )
    if name is not None and gid is not None:
        groups: tuple[int, ...] | None = tuple(os.getgrouplist(name, gid))
    else:
        groups = None if gid is None else (gid,)
    return RunAs(uid=uid, gid=gid, groups=groups)
