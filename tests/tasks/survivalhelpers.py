"""Helpers of the tests that kill daemons and keepers: configs, waits, and cleaning up what outlives them."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymgr.client import Client
from pymgr.keeper.proctree import ProcRef, find_marked, run_marker, send_signal, start_time
from tests.conftest import BASE_CONFIG, Daemon

#: A job that prints, sleeps, then exits with a code: long ones outlive a daemon, short ones end while it is down.
JOB = """
[tasks.types.job]
argv = ["{python}", "-c", "import sys, time; print('started', flush=True); time.sleep(float(sys.argv[1])); sys.exit(int(sys.argv[2]))", "{seconds}", "{code}"]

[tasks.types.job.params]
seconds = { type = "float", min = 0 }
code = { type = "int", default = 0, min = 0, max = 255 }
"""

#: The test daemon's config, leaving runs running when it stops, with the job type.
LEAVE_CONFIG = (
    BASE_CONFIG.replace("[tasks]\nstop_grace_s = 1\n", '[tasks]\nstop_grace_s = 1\non_shutdown = "leave"\n')
    + JOB
)
assert 'on_shutdown = "leave"' in LEAVE_CONFIG

#: Seconds any wait here may take.
WAIT_S = 20.0


def wait_until(predicate: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)
    return result


def states(client: Client) -> dict[int, dict[str, Any]]:
    """Every record, by id, as the API sends it: the list comes a page at a time, so this walks the pages
    to an empty one."""
    found: dict[int, dict[str, Any]] = {}
    while page := client.tasks(before=min(found, default=None)):
        found.update((record.id, record.to_json()) for record in page)
    return found


def keeper_pid(state_dir: Path) -> int:
    """The pid in the keeper's lock file; 0 while a new keeper has it empty (it writes its pid just after)."""
    words = (state_dir / "run" / "keeper.lock").read_text().split()
    return int(words[0]) if words else 0


def reap_state_dir(state_dir: Path) -> None:
    """Kill what a test left running on ``state_dir``: every run's processes, then its keeper."""
    db_path = state_dir / "tasks.db"
    if db_path.exists():
        with sqlite3.connect(db_path) as db:
            rows = db.execute("SELECT id, marker, pid, pid_start_time FROM runs").fetchall()
        for refs in find_marked([run_marker(task_id, marker) for task_id, marker, _, _ in rows]).values():
            for ref in refs:
                send_signal(ref, signal.SIGKILL)
        for _, _, pid, started in rows:
            if pid and started:
                send_signal(ProcRef(pid, started), signal.SIGKILL)
    lock = state_dir / "run" / "keeper.lock"
    if lock.exists() and lock.read_text().strip():
        pid = keeper_pid(state_dir)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"pymgr.keeper" in cmdline and start_time(pid) is not None:
            os.kill(pid, signal.SIGKILL)


def stored_marker(daemon: Daemon, task_id: int) -> str:
    """A run's marker, from the store: no API shows it."""
    with sqlite3.connect(daemon.dir / "state" / "tasks.db") as db:
        return str(db.execute("SELECT marker FROM runs WHERE id = ?", (task_id,)).fetchone()[0])
