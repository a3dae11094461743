"""Checked paths pinned for one spawn: a run names them as ``/proc/self/fd/N``, never as a path swapped since.

Rules:
- A spawn request's ``pins`` (``TaskType.spawn_pins``) name the argv
  elements that hold checked path parameters: a ``Pin`` (index, parts),
  each part text as it is or a ``PinPath`` (base, path).
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
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pymgr._pinpath import can_pin, pin
from pymgr.keeper.spawn import SpawnError, SpawnSpec
from pymgr.protocol.keeper import KeeperMessageError, Pin, PinPath, Spawn, decode_field

#: The first descriptor a pinned path may use: 0, 1 and 2 are the child's stdin, stdout and stderr.
_FIRST_FREE_FD = 3


@contextmanager
def pinned(spec: SpawnSpec, pins: Sequence[Pin] | object) -> Iterator[SpawnSpec]:
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


def _pin(index: int, part: PinPath, fds: list[int]) -> str:
    """Open one checked path; its ``/proc/self/fd/N`` text."""
    try:
        held = pin(part.base, part.path)
    except (ValueError, OSError) as exc:
        reason = exc if isinstance(exc, ValueError) else f"cannot be opened: {exc.strerror or exc}"
        raise SpawnError(f"spawn failed: argv[{index}]: path {part.path!r} {reason}") from None
    fd = held.fd
    if fd < _FIRST_FREE_FD:  # only when the keeper's own 0-2 were closed: the child's dup2 would replace it
        fd = fcntl.fcntl(held.fd, fcntl.F_DUPFD_CLOEXEC, _FIRST_FREE_FD)
        os.close(held.fd)
    fds.append(fd)
    return dataclasses.replace(held, fd=fd).argv_text()


def _parse(pins: Sequence[Pin] | object, argv: list[str]) -> list[tuple[int, tuple[str | PinPath, ...]]]:
    """The request's ``pins``, checked: each names an element of ``argv`` and joins up to its text.

    ``pins`` are the typed pins of a spawn request, or the same in their JSON form (as
    ``TaskType.spawn_pins`` makes them), read by the link's decoder.

    Raises:
        SpawnError: not in that shape, or a pin that does not spell its argv element.
    """
    if pins is None:
        return []
    if not (isinstance(pins, tuple) and all(isinstance(entry, Pin) for entry in pins)):
        try:
            pins = decode_field(Spawn, "pins", pins)
        except KeeperMessageError as exc:
            raise SpawnError(
                f"spawn failed: bad pin {pins!r}: needs an argv index and its parts ({exc.reason})"
            ) from None
    entries = []
    for entry in typing.cast("tuple[Pin, ...]", pins):
        if not 0 <= entry.index < len(argv):
            raise SpawnError(f"spawn failed: bad pin {entry!r}: needs an argv index and its parts")
        if "".join(p if isinstance(p, str) else p.path for p in entry.parts) != argv[entry.index]:
            raise SpawnError(f"spawn failed: bad pin {entry!r}: its parts are not argv[{entry.index}]")
        entries.append((entry.index, entry.parts))
    return entries
