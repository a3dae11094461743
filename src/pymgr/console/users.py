"""The users file: who may sign in to the console, with an argon2id hash of the password and roles.

Rules:
- argon2id, by argon2-cffi's ``PasswordHasher`` (its defaults are RFC 9106's second recommendation);
  a hash made with older parameters is reported by ``needs_rehash`` and replaced at the next login.
- An unknown name costs the same work as a known one (a hash is verified either way), so the
  time of a reply does not say whether a name exists.
- The file is JSON, written whole to a temporary file, 0600, then renamed over the old one.
  ``load`` refuses a file others may read or write: it holds password hashes.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

#: The daemon's rule for a person's name (auth/delegation.py): the console's users are its persons.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Shortest password ``adduser`` accepts (NIST SP 800-63B: at least 8).
MIN_PASSWORD_LENGTH = 8

_HASHER = PasswordHasher()
#: Verified when the name is unknown, so that both cost one argon2 verification.
_DUMMY_HASH = _HASHER.hash("no such user: the time of a reply says nothing")


class UsersFileError(Exception):
    """The users file cannot be read, or a name, role or password is refused (the message says why)."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    password_hash: str
    roles: tuple[str, ...]


def load(path: Path) -> dict[str, User]:
    """The users of ``path`` (an empty dict when it does not exist yet).

    Raises:
        UsersFileError: unreadable, not the expected JSON, or readable by others.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsersFileError(
            f"{path} is mode {stat.S_IMODE(mode):04o}; it holds password hashes: chmod 600 it"
        )
    try:
        data = json.loads(path.read_text())
        return {
            name: User(name, entry["hash"], tuple(entry.get("roles", ()))) for name, entry in data.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsersFileError(f"cannot read the users file {path}: {exc!r}") from exc


def verify(users: dict[str, User], name: str, password: str) -> User | None:
    """The user if ``password`` is ``name``'s, else None; the same work whether ``name`` exists or not."""
    user = users.get(name)
    try:
        _HASHER.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    return user


def needs_rehash(user: User) -> bool:
    return _HASHER.check_needs_rehash(user.password_hash)


def rehashed(user: User, password: str) -> User:
    """``user`` with a new hash of its (verified) ``password``, made with the current parameters."""
    return User(user.name, _HASHER.hash(password), user.roles)


def add(path: Path, name: str, password: str, roles: list[str]) -> User:
    """Add or replace ``name`` in ``path`` with a new argon2id hash of ``password``.

    Raises:
        UsersFileError: a bad name, role or password, or the file cannot be read or written.
    """
    if not NAME.fullmatch(name):
        raise UsersFileError(
            f"a user name is 1 to 64 ASCII letters, digits and . _ @ - (starting with a letter or digit), "
            f"not {name!r}"
        )
    for role in roles:
        if not ROLE.fullmatch(role):
            raise UsersFileError(f"a role is 1 to 64 ASCII letters, digits and . _ -, not {role!r}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsersFileError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    users = load(path)
    users[name] = User(name, _HASHER.hash(password), tuple(dict.fromkeys(roles)))
    save(path, users)
    return users[name]


def save(path: Path, users: dict[str, User]) -> None:
    data = {u.name: {"hash": u.password_hash, "roles": list(u.roles)} for u in users.values()}
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        json.dump(data, out, indent=2, sort_keys=True)
        out.write("\n")
    os.replace(tmp, path)
