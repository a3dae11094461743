"""Shared helpers of the task tests: task types, waits, process checks."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from pymgr.config import TasksConfig, TaskTypeConfig
from pymgr.core.identity import Identity
from pymgr.tasks.manager import TaskManager
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TaskState
from pymgr.tasks.store import SqliteStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: Seconds any single wait in these tests may take before the test fails.
WAIT_S = 15.0

#: Builds a TaskManager on a state dir in tmp_path (the ``make_manager`` fixture).
MakeManager = Callable[..., TaskManager]

CALLER = Identity(transport="unix", uid=33, gid=33, pid=1234, user="www-data")


def py(code: str, *args: str) -> list[str]:
    """argv running a Python snippet with the daemon's interpreter."""
    return ["{python}", "-c", code, *args]


#: Task types the tests use, by name.
TYPES: dict[str, dict[str, Any]] = {
    "echo": {
        "argv": py("import json, sys; print(json.dumps(sys.argv[1:]))", "{arg}", "--arg={arg}"),
        "params": {"arg": {"type": "str"}},
    },
    "env": {
        "argv": py("import json, os; print(json.dumps(dict(os.environ)))"),
        "env": {"LANG": "C.UTF-8", "GREETING": "hello"},
    },
    "exit": {
        "argv": py("import sys; sys.exit(int(sys.argv[1]))", "{code}"),
        "params": {"code": {"type": "int"}},
    },
    "selfkill": {"argv": py("import os, signal; os.kill(os.getpid(), signal.SIGUSR1)")},
    "sleep": {"argv": py("import time; print('ready', flush=True); time.sleep(60)")},
    "stubborn": {
        "argv": py(
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ready', flush=True); time.sleep(60)"
        ),
        "stop_grace_s": 0.5,
    },
    "scan": {
        "argv": [
            "{python}",
            "scan.py",
            "--task-id",
            "{task_id}",
            "--duration",
            "{duration}",
            "--exit-code",
            "{exit_code}",
            "--fork-child",
            "{fork_child}",
        ],
        "cwd": str(EXAMPLES),
        "params": {
            "task_id": {"type": "int", "min": 0},
            "duration": {"type": "float", "default": 30, "min": 0},
            "exit_code": {"type": "int", "default": 0, "min": 0, "max": 255},
            "fork_child": {"type": "bool", "default": False},
        },
    },
    "binsleep": {"argv": [shutil.which("sleep") or "/bin/sleep", "60"]},
    "missing": {"argv": ["/nonexistent/pymgr-test-program"]},
    "badcwd": {"argv": py("pass"), "cwd": "/nonexistent/pymgr-test-dir"},
}


def tasks_config(**overrides: Any) -> TasksConfig:
    types = {name: TaskTypeConfig.model_validate(spec) for name, spec in TYPES.items()}
    # A keeper left behind by a test ("leave", a killed daemon) goes soon.
    return TasksConfig.model_validate(
        {"stop_grace_s": 2.0, "keeper_idle_exit_s": 1.0, "types": types, **overrides}
    )


async def wait_end(manager: TaskManager, task_id: int) -> TaskRecord:
    return await asyncio.wait_for(manager.wait(task_id), WAIT_S)


async def wait_running(manager: TaskManager, task_id: int) -> TaskRecord:
    async with asyncio.timeout(WAIT_S):
        while (record := manager.get(task_id)).state is TaskState.QUEUED:
            await asyncio.sleep(0.01)
    return record


async def wait_log(record: TaskRecord, text: str) -> str:
    """Wait until the run's log contains ``text``; returns the log."""
    path = Path(record.log_path)
    content = ""
    try:
        async with asyncio.timeout(WAIT_S):
            while text not in (content := path.read_text() if path.exists() else ""):
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(
            f"{text!r} not in the log of task {record.id} after {WAIT_S}s: {content!r}"
        ) from None
    return content


def gone(pid: int) -> bool:
    """True when no process has this pid any more, or only its zombie (nobody may reap orphans here)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def fail_statements(
    monkeypatch: pytest.MonkeyPatch, manager: TaskManager, prefix: str, error: str, times: int | None = None
) -> None:
    """Make the manager's store fail the statements that begin with ``prefix`` as SQLite does with
    ``error`` (e.g. "database or disk is full"): ``times`` times, or until ``monkeypatch.undo()``."""
    store = manager._store
    assert isinstance(store, SqliteStore)
    execute = store._execute
    left = [times]

    def failing(what: str, sql: str, args: Any = ()) -> Any:
        if sql.startswith(prefix) and left[0] != 0:
            if left[0] is not None:
                left[0] -= 1
            raise store._failure(what, sqlite3.OperationalError(error))
        return execute(what, sql, args)

    monkeypatch.setattr(store, "_execute", failing)
