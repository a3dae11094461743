"""The daemon's hold on its state directory: one daemon per directory, and its record store.

Rules:
- A daemon takes ``<state_dir>/run/daemon.lock`` (flock, held for its
  life, released by the kernel when it dies, however it dies) before it
  talks to the keeper or recovers runs: two daemons on one directory would
  each re-adopt, restart and record the same runs.
- The lock file holds the holder's pid, so the refusal can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pymgr.config import TasksConfig
from pymgr.errors import Unavailable
from pymgr.tasks.logs import first_free_id
from pymgr.tasks.store import SqliteStore


def lock_state_dir(state_dir: Path) -> int:
    """Take the directory for this daemon; returns the lock's descriptor (keep it open).

    Raises:
        Unavailable: another daemon holds it (the message names its pid).
    """
    run_dir = state_dir / "run"
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(run_dir / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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


def open_store(config: TasksConfig, state_dir: Path) -> SqliteStore:
    """The records of ``state_dir`` (``tasks.db``), with the config's retention."""
    return SqliteStore(
        state_dir / "tasks.db",
        max_records=config.max_records,
        max_age_s=None if config.max_age_days is None else config.max_age_days * 86400,
        busy_timeout_s=config.store_busy_timeout_s,
        first_id=first_free_id(state_dir / "logs"),
    )
