"""Whether a config file may be believed, and whether it leaks its secrets.

Rules:
- The config file, and every directory on the way to it (links followed),
  must be writable by root or the daemon's user only, as ``sudo`` asks of
  ``/etc/sudoers`` (``_fsguard.check_trusted``): whoever can write the
  config can grant itself every action and add commands that run as root.
- The executable of every command, and of every task type whose argv[0]
  is an absolute path, is held to the same rule (its own user may own it
  too when the command or type runs as that user): a writable executable
  is a root shell for whoever can write it.
- A config that holds secrets inline (every ``SecretStr`` value: ``[legacy]
  secret``, ``[[auth.keys]] secret``) must be readable by its owner only
  (``mode & 0o077 == 0``), as key files must; ``[security] public_secrets =
  true`` declares them public (the demo's are), and the daemon says so at
  every start.
- The ``base`` of a path param of a command that runs as root is only
  warned about when others can write it: such a directory is often where
  the web application puts files for root to act on, by design; the
  confinement of path params is what makes it safe, and refusing would make
  the feature unusable.
- Windows has ACLs, not modes: these checks apply to POSIX systems only.
"""

from __future__ import annotations

import os
import pwd
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from pymgr._fsguard import UnsafePathError, check_trusted, trusted_uids

__all__ = ["check_config", "config_warnings", "inline_secrets"]


def inline_secrets(model: BaseModel, where: str = "") -> Iterator[str]:
    """The dotted names of every secret set inline in ``model``."""
    for name, value in model:
        yield from _secrets_in(value, f"{where}.{name}" if where else name)


def _secrets_in(value: Any, where: str) -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield where
    elif isinstance(value, BaseModel):
        yield from inline_secrets(value, where)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _secrets_in(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secrets_in(item, f"{where}.{key}")


def check_config(path: Path, st: os.stat_result, config: Any) -> None:
    """Refuse a config others could change, or whose secrets others could read (see the module rules).

    ``st`` is the ``fstat`` of the file as it was read.

    Raises:
        UnsafePathError: names the path at fault and the fix.
    """
    if sys.platform == "win32":
        return
    check_trusted(path)
    secrets = list(inline_secrets(config))
    if secrets and st.st_mode & 0o077 and not config.security.public_secrets:
        raise UnsafePathError(
            path,
            f"holds secrets inline ({', '.join(secrets)}) and has mode {stat.S_IMODE(st.st_mode):04o}: "
            "other users may read them",
            f"run chmod 600 {path}, or move them to secret_file; if they are meant to be public "
            "(a demo), say so with public_secrets = true in [security]",
        )
    for name, argv0, user in _executables(config):
        _check_executable(name, Path(argv0), user)


def _executables(config: Any) -> Iterator[tuple[str, str, str | None]]:
    for name, command in config.commands.items():
        yield f"[commands.{name}]", command.argv[0], command.user
    for name, task_type in config.tasks.types.items():
        argv0 = task_type.argv[0]
        if argv0.startswith("/") and "{" not in argv0:
            yield f"[tasks.types.{name}]", argv0, task_type.user


def _check_executable(where: str, executable: Path, user: str | None) -> None:
    owners = set(trusted_uids())
    run_as = _uid_of(user)
    if run_as is not None:
        owners.add(run_as)
    # A missing executable fails when called; who could create it is what matters now.
    existing = executable
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    try:
        check_trusted(existing, owner_uids=owners)
    except UnsafePathError as exc:
        raise UnsafePathError(f"{where} argv[0]: {exc.path}", exc.reason, exc.fix) from None


def _uid_of(user: str | None) -> int | None:
    if user is None:
        return None
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None  # the command's own check names the unknown user


def _runs_as_root(user: str | None) -> bool:
    uid = _uid_of(user)
    return uid == 0 if user is not None else os.geteuid() == 0


def config_warnings(config: Any) -> list[str]:
    """What start-up says loudly about the config: public secrets, base directories others can write."""
    warnings = []
    if config.security.public_secrets and any(inline_secrets(config)):
        warnings.append(
            "CONFIG SECRETS ARE PUBLIC: [security] public_secrets = true, so the secrets written in the "
            f"config ({', '.join(inline_secrets(config))}) are accepted whoever can read the file. "
            "Fine for the demo, never on a real host"
        )
    if sys.platform == "win32":
        return warnings
    for name, command in config.commands.items():
        if not _runs_as_root(command.user):
            continue
        for param, spec in command.params.items():
            if spec.base is None:
                continue
            try:
                check_trusted(spec.base)
            except OSError as exc:
                warnings.append(
                    f"[commands.{name}] param {param!r}: base {spec.base} is not protected ({exc.strerror}); "
                    "the command runs as root on paths others can change: path confinement is all that "
                    "keeps it inside"
                )
    return warnings
