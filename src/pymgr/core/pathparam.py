"""Path parameters confined to a directory: no route from a parameter to a file outside it.

Rules (checked in this order, each refusal names the rule):
- Not empty, no NUL byte (the kernel would cut the path there).
- No ``..`` component, even one that would stay inside: a path with ``..``
  is refused, not normalized, so what the caller wrote is what is used.
- Relative paths are taken from the base directory; an absolute path must
  already lie inside it.
- The path is resolved (``os.path.realpath``: every symlink of the parts
  that exist is followed) and must still be the base or below it; so a
  symlink inside the base that points out of it is refused.
- The value the action receives (and the argv gets) is the resolved,
  absolute path.

What this cannot rule out: a symlink created or swapped after the check
and before the command opens the path. Run commands as a user who cannot
write in the base directory (``user = ...``) when that matters.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["confine"]


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
    if resolved != root and not resolved.startswith(root.rstrip("/") + "/"):
        raise ValueError(f"must stay inside {base} (it resolves to {resolved})")
    return resolved
