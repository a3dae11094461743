"""Path parameters confined to a directory: no route from a parameter to a file outside it.

Rules (checked in this order, each refusal names the rule):
- Not empty, no NUL byte (the kernel would cut the path there).
- No ``..`` component, even one that would stay inside: a path with ``..``
  is refused, not normalized, so what the caller wrote is what is used.
- Relative paths are taken from the base directory; an absolute path must
  already lie inside it.
- The path is resolved (``os.path.realpath``: every symlink of the parts
  that exist is followed) and must still be the base or below it; so a
  symlink inside the base that points out of it is refused. The refusal
  says only that the path leaves the base: where a link points can be a
  secret of the files' owner.
- The value the action receives is the resolved, absolute path.

Between the check and the use, someone who can write in the base could swap
a directory or the file for a symlink. ``pymgr._pinpath.pin`` closes that
race where the path is used: a command (``modules/commands.py``) and a task
run (the keeper, ``keeper/spawnpins.py``) get ``/proc/self/fd/N``, their
own copy of a descriptor opened again beneath the base, following no
symlink. Where this cannot hold: components that do not exist yet (a file
the process is to create) are looked up by the process itself, so a symlink
planted there in time is followed; and without ``O_PATH`` and ``/proc``
(not Linux) the process gets the resolved path as text. Run commands and
task types as a user who cannot write in the base when that matters.
"""

from __future__ import annotations

import os
from pathlib import Path

from pymgr._pinpath import PinnedPath, can_pin, inside, pin

__all__ = ["PinnedPath", "can_pin", "confine", "pin"]


def confine(base: Path, value: str) -> str:
    """The resolved absolute path of ``value`` under ``base``.

    Raises:
        ValueError: empty, a NUL byte, a ``..`` component, or it resolves outside ``base``.
    """
    if not value:
        raise ValueError("must be a path, not empty")
    if "\x00" in value:
        raise ValueError("must not contain a NUL byte")
    if ".." in value.split("/"):
        raise ValueError("must not contain '..'")
    root = os.path.realpath(base)
    resolved = os.path.realpath(os.path.join(root, value))
    if not inside(root, resolved):
        written = os.path.normpath(value)
        if os.path.isabs(value) and not (inside(str(base), written) or inside(root, written)):
            raise ValueError(f"must stay inside {base}: an absolute path must start with it")
        raise ValueError(f"must stay inside {base}: it leaves it through a symbolic link")
    return resolved

