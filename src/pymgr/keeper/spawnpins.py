"""Checked paths pinned for one spawn: a run names them as ``/proc/self/fd/N``, never as a path swapped since.

Rules:
- A spawn request's ``pins`` (``TaskType.spawn_pins``) name the argv
  elements that hold checked path parameters: ``{"index": i, "parts":
  [...]}``, each part text as it is or ``{"base": ..., "path": ...}``.
- Each path is opened again beneath its base right before the spawn,
  following no symlink (``pymgr._pinpath.pin``), and its part becomes
  ``/proc/self/fd/N``. A component that is now a symlink (a directory
  swapped since the daemon checked it) fails the spawn, saying so, and
  nothing runs. Every spawn pins afresh: a restart of the run too.
- The descriptors sit above stderr (the child's 0, 1 and 2 are set by
  dup2), are inheritable for the length of the spawn only (the keeper is
  single-threaded: no other spawn sees them; its posix_spawn path relies on
  every other descriptor being close-on-exec) and are closed after it.
- Where nothing can be pinned (``can_pin``: no ``O_PATH`` or no ``/proc``)
  the argv is used as it is: the checked paths as text.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pymgr._pinpath import can_pin, pin
from pymgr.keeper.spawn import SpawnError, SpawnSpec

#: The first descriptor a pinned path may use: 0, 1 and 2 are the child's stdin, stdout and stderr.
_FIRST_FREE_FD = 3


@contextmanager
def pinned(spec: SpawnSpec, pins: Any) -> Iterator[SpawnSpec]:
    """``spec`` with its checked paths pinned and passed, for one spawn; closes the descriptors after.

    Raises:
        SpawnError: ``pins`` is malformed, or a path changed since it was checked (or cannot be opened).
    """
    entries = _parse(pins, spec.argv)
    if not entries or not can_pin() or spec.user is not None or spec.group is not None:
        # A run under its own user or group gets the text: the kernel then checks every directory on
        # the way with that user's rights, and a swapped link leads it nowhere that user may not go.
        # A descriptor opened here (as the keeper's user) would skip those checks in the run.
        yield spec
        return
    fds: list[int] = []
    try:
        argv = list(spec.argv)
        for index, parts in entries:
            argv[index] = "".join(part if isinstance(part, str) else _pin(index, part, fds) for part in parts)
        for fd in fds:
            os.set_inheritable(fd, True)
        yield dataclasses.replace(spec, argv=argv, pass_fds=tuple(fds))
    finally:
        for fd in fds:
            os.close(fd)


def _pin(index: int, part: dict[str, str], fds: list[int]) -> str:
    """Open one checked path; its ``/proc/self/fd/N`` text."""
    try:
        held = pin(part["base"], part["path"])
    except (ValueError, OSError) as exc:
        reason = exc if isinstance(exc, ValueError) else f"cannot be opened: {exc.strerror or exc}"
        raise SpawnError(f"spawn failed: argv[{index}]: path {part['path']!r} {reason}") from None
    fd = held.fd
    if fd < _FIRST_FREE_FD:  # only when the keeper's own 0-2 were closed: the child's dup2 would replace it
        fd = fcntl.fcntl(held.fd, fcntl.F_DUPFD_CLOEXEC, _FIRST_FREE_FD)
        os.close(held.fd)
    fds.append(fd)
    return dataclasses.replace(held, fd=fd).argv_text()


def _parse(pins: Any, argv: list[str]) -> list[tuple[int, list[str | dict[str, str]]]]:
    """The request's ``pins``, checked: each names an element of ``argv`` and joins up to its text.

    Raises:
        SpawnError: not in the shape ``TaskType.spawn_pins`` makes.
    """
    if pins is None:
        return []
    entries = []
    for entry in pins if isinstance(pins, list) else [pins]:
        index = entry.get("index") if isinstance(entry, dict) else None
        parts = entry.get("parts") if isinstance(entry, dict) else None
        if not (isinstance(index, int) and 0 <= index < len(argv) and isinstance(parts, list)
                and all(isinstance(p, str) or _is_path(p) for p in parts)):  # fmt: skip
            raise SpawnError(f"spawn failed: bad pin {entry!r}: needs an argv index and its parts")
        if "".join(p if isinstance(p, str) else p["path"] for p in parts) != argv[index]:
            raise SpawnError(f"spawn failed: bad pin {entry!r}: its parts are not argv[{index}]")
        entries.append((index, parts))
    return entries


def _is_path(part: Any) -> bool:
    return isinstance(part, dict) and isinstance(part.get("base"), str) and isinstance(part.get("path"), str)
