"""Loading the HMAC keys of ``[[auth.keys]]``: inline secrets or secret files.

Rules:
- A secret file must be a regular file owned by the daemon's user, readable
  by nobody else (mode 0600 or 0400: ``mode & 0o077 == 0``); anything else
  stops start-up with the ``chmod``/``chown`` to run. Symlinks are not
  followed: a link could be re-pointed by whoever owns its directory.
- The secret is the file's bytes with surrounding whitespace (a trailing
  newline from ``echo``) stripped, and at least ``MIN_SECRET_BYTES`` long.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pymgr.auth.settings import MIN_SECRET_BYTES, AuthConfig, KeyConfig

__all__ = ["KeyLoadError", "load_keys"]


class KeyLoadError(Exception):
    """A key cannot be loaded; the message names the key, the file and the fix."""


def _read_secret_file(key: KeyConfig, path: Path) -> bytes:
    where = f"[[auth.keys]] {key.id!r}: secret_file {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyLoadError(f"{where} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyLoadError(f"{where} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyLoadError(
                f"{where} has mode {stat.S_IMODE(st.st_mode):04o}: group or others may read it; run chmod 600 {path}"
            )
        if st.st_uid != os.geteuid():
            raise KeyLoadError(
                f"{where} is owned by uid {st.st_uid}, not by the daemon's uid {os.geteuid()}; "
                f"run chown {os.geteuid()} {path}"
            )
        data = os.read(fd, 64 * 1024 + 1)
    finally:
        os.close(fd)
    secret = data.strip()
    if len(data) > 64 * 1024:
        raise KeyLoadError(f"{where} is larger than 64 KiB; a secret is a short random string")
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyLoadError(
            f"{where} holds {len(secret)} bytes; a secret must be at least {MIN_SECRET_BYTES} bytes"
        )
    return secret


def load_keys(config: AuthConfig) -> dict[str, bytes]:
    """Secret bytes by key id.

    Raises:
        KeyLoadError: a secret file is missing, too open, not ours or too short.
    """
    keys = {}
    for key in config.keys:
        if key.secret is not None:
            keys[key.id] = key.secret.get_secret_value().encode("utf-8")
        elif key.secret_file is not None:
            keys[key.id] = _read_secret_file(key, key.secret_file)
        else:
            raise RuntimeError(f"key {key.id!r} has no secret; KeyConfig should have refused it (a bug)")
    return keys
