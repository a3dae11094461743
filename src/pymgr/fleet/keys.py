"""The fleet's Ed25519 keys: made (``pymgr fleet keygen``), and read from their files.

Rules:
- A host reads only public keys (``[[fleet.keys]] key_file``): they are not
  secret, but whoever can replace one can sign jobs, so the file must be one
  only root or the daemon's user can change (``_fsguard.check_trusted``).
- A submitter reads the private key: a regular file of its own user, mode
  0600 or 0400, links not followed; anything else is refused with the fix.
- The Redis password file follows the rule of a private key.
- Files are PEM (PKCS#8 private, SubjectPublicKeyInfo public), as OpenSSL
  writes them: ``openssl genpkey -algorithm ed25519`` makes one too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pymgr._fsguard import UnsafePathError, check_trusted

__all__ = ["FleetKeyError", "keygen", "load_private_key", "load_public_key", "read_secret_file"]

#: Largest key or password file read: a PEM Ed25519 key is about 120 bytes.
MAX_KEY_FILE_BYTES = 16 * 1024


class FleetKeyError(Exception):
    """A key or password file cannot be used; the message names the file and the fix."""


def _read(path: Path, what: str, private: bool) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise FleetKeyError(f"{what} {path} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FleetKeyError(f"{what} {path} is not a regular file")
        if private and st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise FleetKeyError(
                f"{what} {path} has mode {mode:04o}: others may read it; run chmod 600 {path}"
            )
        if private and st.st_uid != os.geteuid():
            raise FleetKeyError(f"{what} {path} is owned by uid {st.st_uid}; run chown {os.geteuid()} {path}")
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise FleetKeyError(f"{what} {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A host's copy of a submitter's public key.

    Raises:
        FleetKeyError: the file is missing, others may change it, or it holds no Ed25519 public key.
    """
    try:
        check_trusted(path)
    except UnsafePathError as exc:
        raise FleetKeyError(f"fleet key {path} is refused: {exc.strerror}") from None
    except OSError as exc:
        raise FleetKeyError(f"fleet key {path} cannot be checked: {exc.strerror or exc}") from None
    data = _read(path, "fleet key", private=False)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise FleetKeyError(f"fleet key {path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise FleetKeyError(f"fleet key {path} is a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A submitter's signing key.

    Raises:
        FleetKeyError: the file is missing, readable by others, not ours, or holds no Ed25519 private key.
    """
    data = _read(path, "fleet signing key", private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise FleetKeyError(
            f"fleet signing key {path} is not an unencrypted PEM private key: {exc}"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise FleetKeyError(f"fleet signing key {path} is a {type(key).__name__}, not an Ed25519 key")
    return key


def read_secret_file(path: Path) -> str:
    """The Redis password in ``path``, surrounding whitespace stripped.

    Raises:
        FleetKeyError: as for a private key, or the file is empty.
    """
    secret = _read(path, "password_file", private=True).decode("utf-8", "replace").strip()
    if not secret:
        raise FleetKeyError(f"password_file {path} is empty")
    return secret


def keygen(directory: Path, key_id: str) -> tuple[Path, Path]:
    """Write a new key pair: ``ID.key`` (private, 0600; for submitters) and ``ID.pub`` (for hosts).

    Raises:
        FileExistsError: either file exists (a key is never overwritten).
    """
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    paths = (directory / f"{key_id}.key", directory / f"{key_id}.pub")
    for path, data, mode in ((paths[0], private, 0o600), (paths[1], public, 0o644)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
    return paths
