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
a directory or the file for a symlink. ``pin`` closes that race for a
command: it opens the checked path again, one component at a time from the
base's descriptor, following no symlink (a symlink found now is a swap, and
refused), and the command receives ``/proc/self/fd/N``, its own copy of that
descriptor: whatever it opens through it is the checked file or directory.
Where this cannot hold: components that do not exist yet (a file the command
is to create) are looked up by the command itself, so a symlink planted
there in time is followed; and without ``O_PATH`` and ``/proc`` (not Linux)
the command gets the resolved path as text. Run commands as a user who
cannot write in the base when that matters.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PinnedPath", "confine", "pin"]

#: Where a process finds its own descriptors by number (Linux).
PROC_FDS = "/proc/self/fd"


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
    if not _inside(root, resolved):
        written = os.path.normpath(value)
        if os.path.isabs(value) and not (_inside(str(base), written) or _inside(root, written)):
            raise ValueError(f"must stay inside {base}: an absolute path must start with it")
        raise ValueError(f"must stay inside {base}: it leaves it through a symbolic link")
    return resolved


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True, slots=True)
class PinnedPath:
    """A checked path held open: ``fd`` (an ``O_PATH`` descriptor) and the components after it that do not exist."""

    fd: int
    rest: str

    def argv_text(self) -> str:
        """How the command names it: through its own copy of ``fd`` (passed at the same number)."""
        return f"{PROC_FDS}/{self.fd}" + (f"/{self.rest}" if self.rest else "")


def can_pin() -> bool:
    """Whether this system can hold a path open for a command (``O_PATH`` and ``/proc/self/fd``)."""
    return hasattr(os, "O_PATH") and os.path.isdir(PROC_FDS)


def pin(base: Path, resolved: str) -> PinnedPath:
    """Open ``resolved`` (a value ``confine`` returned) beneath ``base``, following no symlink.

    The caller owns the descriptor and closes it.

    Raises:
        ValueError: a component is now a symbolic link, or the base itself moved.
        OSError: a component cannot be opened (permissions, I/O).
    """
    root = os.path.realpath(base)
    if not _inside(root, resolved):  # the base itself was replaced since the check
        raise ValueError(f"changed after it was checked: it no longer lies inside {base}")
    parts = [p for p in resolved[len(root):].split("/") if p]
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(parts):
            try:
                child = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                return PinnedPath(fd, "/".join(parts[index:]))  # to be created: the command looks it up
            os.close(fd)
            fd = child
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                shown = "/".join(parts[: index + 1])
                raise ValueError(f"changed after it was checked: {shown!r} is now a symbolic link")
    except BaseException:
        os.close(fd)
        raise
    return PinnedPath(fd, "")
