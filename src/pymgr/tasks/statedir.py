"""The daemon's hold on its state directory: one daemon per directory, and its record store.

Rules:
- A daemon takes ``<state_dir>/run/daemon.lock`` (flock, held for its
  life, released by the kernel when it dies, however it dies) before it
  talks to the keeper or recovers runs: two daemons on one directory would
  each re-adopt, restart and record the same runs.
- The lock file holds the holder's pid, so the refusal can name it.
- Before anything is opened there, ``prepare_state_dir`` makes the state
  directory, ``run/`` and ``logs/`` private (0700, owned by the daemon's
  user: a wider one of ours is tightened and the caller logs it, one of
  another user is refused), checks that nobody else can replace them (the
  directories above are trusted), and narrows files left wider by older
  versions to 0600. Only the daemon's user can then add names there, so a
  link checked before a library opens a file stays checked.
- Every file the daemon opens there is opened through ``pymgr._fsguard``
  (``O_NOFOLLOW``, a regular file of ours, mode set on the descriptor);
  SQLite opens ``tasks.db`` and its ``-wal``/``-shm`` itself, so those are
  checked for links first and ``tasks.db`` is created by us, 0600: SQLite
  gives the ``-wal`` and ``-shm`` files the database's own mode.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from pymgr._fsguard import check_trusted, ensure_private_dir, open_private, refuse_link, tighten_file
from pymgr.config import TasksConfig
from pymgr.errors import Unavailable
from pymgr.tasks.logreader import first_free_id
from pymgr.tasks.store import SqliteStore


def lock_state_dir(state_dir: Path) -> int:
    """Take the directory for this daemon; returns the lock's descriptor (keep it open).

    Raises:
        Unavailable: another daemon holds it (the message names its pid).
    """
    run_dir = state_dir / "run"
    ensure_private_dir(run_dir)
    fd = open_private(run_dir / "daemon.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise Unavailable(
            f"state directory {state_dir} is in use by another pymgr daemon (pid {holder}); "
            "give each daemon its own state_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


#: The files SQLite opens itself: checked for links before it does.
STORE_FILES = ("tasks.db", "tasks.db-wal", "tasks.db-shm", "tasks.db-journal")

#: The subdirectories of the state directory (run logs; the keeper's socket, locks and journal).
PRIVATE_SUBDIRS = ("run", "logs")


def prepare_state_dir(state_dir: Path) -> list[str]:
    """Make ``state_dir`` private and check it (see the module rules); what was tightened, to log.

    Raises:
        UnsafePathError: a directory there is a link, another user's, or
            replaceable by another user; the message names it and the fix.
    """
    notes = []
    for directory in (state_dir, *(state_dir / name for name in PRIVATE_SUBDIRS)):
        old = ensure_private_dir(directory)
        if old is not None:
            notes.append(f"{directory} had mode {old:04o}: tightened to 0700")
    check_trusted(state_dir)
    for directory in (state_dir, state_dir / "run"):
        for entry in os.scandir(directory):
            if entry.is_symlink():  # pymgr makes none; one here was planted to redirect a write
                refuse_link(entry.path)
            old = tighten_file(entry.path)
            if old is not None:
                notes.append(f"{entry.path} had mode {old:04o}: tightened to 0600")
    return notes


def open_store(config: TasksConfig, state_dir: Path) -> SqliteStore:
    """The records of ``state_dir`` (``tasks.db``), with the config's retention.

    Raises:
        UnsafePathError: ``tasks.db`` or one of its side files is a link or not ours.
    """
    for name in STORE_FILES:
        refuse_link(state_dir / name)
    try:
        os.close(open_private(state_dir / "tasks.db", os.O_RDWR | os.O_CREAT))
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        # A read-only state directory: the store serves what is there (the names are checked above).
    return SqliteStore(
        state_dir / "tasks.db",
        max_records=config.max_records,
        max_age_s=None if config.max_age_days is None else config.max_age_days * 86400,
        busy_timeout_s=config.store_busy_timeout_s,
        first_id=first_free_id(state_dir / "logs"),
    )
