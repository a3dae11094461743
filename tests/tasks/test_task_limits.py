"""Limits and policies per task type, with real processes: timeout, max_concurrent, restarts, rlimits, user."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from taskhelpers import CALLER, MakeManager, py, wait_end, wait_log, wait_running

from pymgr.config import TaskTypeConfig
from pymgr.tasks.manager import TaskManager
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TaskState

SLEEP_60 = py("import time; print('ready', flush=True); time.sleep(60)")
EXIT_1 = py("import sys; sys.exit(1)")


def types(**specs: dict[str, Any]) -> dict[str, TaskTypeConfig]:
    return {name: TaskTypeConfig.model_validate(spec) for name, spec in specs.items()}


async def chain(manager: TaskManager, first: TaskRecord, length: int) -> list[TaskRecord]:
    """The attempts of a restarting run, oldest first, once ``length`` of them exist and the last ended."""
    async with asyncio.timeout(20):
        while True:
            records = sorted(manager.list_runs(key=first.key), key=lambda r: r.id)
            if len(records) >= length and records[-1].state not in (TaskState.QUEUED, TaskState.RUNNING):
                return records
            await asyncio.sleep(0.02)


# -- timeout -----------------------------------------------------------------------------


async def test_timeout_stops_the_run_as_timed_out(make_manager: MakeManager) -> None:
    manager = make_manager(types=types(slow={"argv": SLEEP_60, "timeout_s": 0.5}))
    before = time.monotonic()
    record = await manager.start("slow", {}, None, CALLER)
    ended = await wait_end(manager, record.id)
    assert 0.5 <= time.monotonic() - before < 5.0
    assert (ended.state, ended.cancel_source, ended.signal) == (TaskState.TIMED_OUT, "deadline", "SIGTERM")
    assert ended.stopped_by is not None and ended.stopped_by["transport"] == "internal"


async def test_a_run_that_ends_within_its_timeout_succeeds(make_manager: MakeManager) -> None:
    manager = make_manager(types=types(quick={"argv": py("import time; time.sleep(0.1)"), "timeout_s": 3}))
    ended = await wait_end(manager, (await manager.start("quick", {}, None, CALLER)).id)
    assert (ended.state, ended.cancel_source) == (TaskState.SUCCEEDED, None)


# -- max_concurrent ------------------------------------------------------------------------


async def test_max_concurrent_queues_extra_starts_and_releases_them_in_order(
    make_manager: MakeManager,
) -> None:
    job = py("import time; time.sleep(0.3)")
    manager = make_manager(types=types(job={"argv": job, "max_concurrent": 2}))
    records = [await manager.start("job", {}, None, CALLER) for _ in range(5)]
    await asyncio.sleep(0.1)
    assert [manager.get(r.id).state for r in records].count(
        TaskState.RUNNING
    ) == 2  # at the limit, not past it
    ended = [await wait_end(manager, r.id) for r in records]
    assert all(r.state is TaskState.SUCCEEDED for r in ended)
    starts = [r.started_at for r in ended]
    assert starts == sorted(starts)  # released in start order
    # How many ran at each start: never more than 2, and 2 at some point (the limit, not fewer).
    at_once = [sum(1 for o in ended if o.started_at <= r.started_at < o.ended_at) for r in ended]  # type: ignore[operator]
    assert max(at_once) == 2, at_once


async def test_a_stopped_queued_run_frees_nothing_and_never_runs(make_manager: MakeManager) -> None:
    manager = make_manager(types=types(job={"argv": SLEEP_60, "max_concurrent": 1}))
    first = await wait_running(manager, (await manager.start("job", {}, None, CALLER)).id)
    second = await manager.start("job", {}, None, CALLER)
    third = await manager.start("job", {}, None, CALLER)
    assert (await manager.stop(second.id, CALLER)).state is TaskState.STOPPED
    await manager.stop(first.id, CALLER)
    await wait_end(manager, first.id)
    running = await wait_running(manager, third.id)
    assert running.state is TaskState.RUNNING and manager.get(second.id).pid is None


# -- restarts -------------------------------------------------------------------------------


async def test_on_failure_restarts_with_backoff_until_max_attempts(make_manager: MakeManager) -> None:
    spec = {
        "argv": EXIT_1,
        "restart": "on-failure",
        "restart_delay_s": 0.2,
        "restart_delay_max_s": 0.4,
        "max_attempts": 4,
    }
    manager = make_manager(types=types(flaky=spec))
    first = await manager.start("flaky", {}, "flaky:1", CALLER)
    attempts = await chain(manager, first, 4)
    assert [(r.attempt, r.state, r.exit_code) for r in attempts] == [
        (n, TaskState.FAILED, 1) for n in (1, 2, 3, 4)
    ]
    assert [r.retry_of for r in attempts] == [None, *(r.id for r in attempts[:-1])]
    assert attempts[-1].error == "not restarted: max 4 attempts reached"
    assert all(r.error is None for r in attempts[:-1])
    for previous, current, delay in zip(attempts[:-1], attempts[1:], (0.2, 0.4, 0.4), strict=True):
        waited = (current.started_at - previous.ended_at).total_seconds()  # type: ignore[operator]
        assert delay <= waited < delay + 1.0, (delay, waited)
    assert {r.started_by["uid"] for r in attempts} == {33}  # the chain keeps who started it


async def test_the_key_stays_held_during_the_backoff(make_manager: MakeManager) -> None:
    spec = {"argv": EXIT_1, "restart": "on-failure", "restart_delay_s": 5, "max_attempts": 2}
    manager = make_manager(types=types(flaky=spec))
    first = await manager.start("flaky", {}, "k", CALLER)
    await wait_end(manager, first.id)
    retry = manager.list_runs(key="k")[0]
    assert (retry.state, retry.attempt, retry.retry_of) == (TaskState.QUEUED, 2, first.id)
    assert retry.not_before is not None and retry.not_before > first.created_at
    assert (await manager.start("flaky", {}, "k", CALLER)).id == retry.id  # held: the same run
    assert (await manager.stop(retry.id, CALLER)).state is TaskState.STOPPED  # and a stop ends the chain


async def test_always_restarts_a_success_until_the_flapping_guard(make_manager: MakeManager) -> None:
    spec = {
        "argv": py("pass"),
        "restart": "always",
        "restart_delay_s": 0,
        "restart_delay_max_s": 0,
        "flap_restarts": 3,
    }
    manager = make_manager(types=types(service=spec))
    first = await manager.start("service", {}, "svc", CALLER)
    attempts = await chain(manager, first, 4)
    assert [(r.attempt, r.state) for r in attempts] == [(n, TaskState.SUCCEEDED) for n in (1, 2, 3, 4)]
    assert attempts[-1].error == "not restarted: flapping (3 restarts within 60 s)"
    await asyncio.sleep(0.2)
    assert len(manager.list_runs(key="svc")) == 4


async def test_a_stopped_run_is_not_restarted(make_manager: MakeManager) -> None:
    manager = make_manager(types=types(service={"argv": SLEEP_60, "restart": "always", "restart_delay_s": 0}))
    record = await wait_running(manager, (await manager.start("service", {}, "svc", CALLER)).id)
    await manager.stop(record.id, CALLER)
    assert (await wait_end(manager, record.id)).state is TaskState.STOPPED
    await asyncio.sleep(0.2)
    assert [r.id for r in manager.list_runs(key="svc")] == [record.id]


async def test_a_timed_out_run_is_restarted_on_failure(make_manager: MakeManager) -> None:
    spec = {
        "argv": SLEEP_60,
        "timeout_s": 0.3,
        "restart": "on-failure",
        "restart_delay_s": 0,
        "max_attempts": 2,
    }
    manager = make_manager(types=types(slow=spec))
    attempts = await chain(manager, await manager.start("slow", {}, "slow", CALLER), 2)
    assert [(r.attempt, r.state) for r in attempts] == [(1, TaskState.TIMED_OUT), (2, TaskState.TIMED_OUT)]


# -- the process: rlimits, user, environment, errors on both spawn paths --------------------------


def limits_of(pid: int) -> dict[str, tuple[str, str]]:
    rows = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {row[:26].strip(): tuple(row[26:].split()[:2]) for row in rows}  # type: ignore[misc]


async def test_rlimits_are_in_the_process_limits(make_manager: MakeManager) -> None:
    rlimits = {"nofile": [64, 128], "as": 2**31, "cpu": [100, 200], "nproc": [4000, 5000]}
    manager = make_manager(types=types(limited={"argv": SLEEP_60, "rlimits": rlimits}))
    record = await wait_running(manager, (await manager.start("limited", {}, None, CALLER)).id)
    await wait_log(record, "ready")
    limits = limits_of(record.pid)  # type: ignore[arg-type]
    assert limits["Max open files"] == ("64", "128")
    assert limits["Max address space"] == (str(2**31), str(2**31))
    assert limits["Max cpu time"] == ("100", "200")
    assert limits["Max processes"] == ("4000", "5000")
    assert os.getsid(record.pid) == record.pid  # type: ignore[arg-type]  # its own session on this path too


async def test_an_rlimit_the_program_exceeds_is_enforced(make_manager: MakeManager) -> None:
    opens = py("import os; [os.open('/dev/null', os.O_RDONLY) for _ in range(100)]")
    manager = make_manager(types=types(opener={"argv": opens, "rlimits": {"nofile": 20}}))
    ended = await wait_end(manager, (await manager.start("opener", {}, None, CALLER)).id)
    assert (ended.state, ended.exit_code) == (TaskState.FAILED, 1)
    assert "Too many open files" in Path(ended.log_path).read_text()


@pytest.mark.parametrize("path", ["vfork", "fork"])
async def test_spawn_errors_read_the_same_on_both_paths(make_manager: MakeManager, path: str) -> None:
    limits = {"rlimits": {"nofile": 1024}} if path == "fork" else {}
    manager = make_manager(
        types=types(
            missing={"argv": ["/nonexistent/pymgr-test-program"], **limits},
            badcwd={"argv": py("pass"), "cwd": "/nonexistent/pymgr-test-dir", **limits},
            env={
                "argv": py("import json, os; print(json.dumps(dict(os.environ)))"),
                "env": {"A": "1"},
                **limits,
            },
        )
    )
    missing = await wait_end(manager, (await manager.start("missing", {}, None, CALLER)).id)
    assert missing.error == "spawn failed: No such file or directory: '/nonexistent/pymgr-test-program'"
    badcwd = await wait_end(manager, (await manager.start("badcwd", {}, None, CALLER)).id)
    assert badcwd.error == "spawn failed: No such file or directory: '/nonexistent/pymgr-test-dir'"
    env = await wait_end(manager, (await manager.start("env", {}, None, CALLER)).id)
    seen = __import__("json").loads(Path(env.log_path).read_text())
    seen.pop("LC_CTYPE", None)
    assert seen == {"A": "1", "PYMGR_TASK_ID": str(env.id), "PYMGR_TASK_MARKER": env.marker}


@pytest.mark.skipif(
    os.geteuid() != 0, reason="dropping privileges needs root (the keeper runs as the test's user)"
)
@pytest.mark.parametrize(
    ("user", "group", "ids"), [("nobody", None, "65534 65534"), ("33", "nogroup", "33 65534")]
)
@pytest.mark.parametrize("path", ["vfork", "fork"])
async def test_runs_as_the_types_user_and_group(
    make_manager: MakeManager, user: str, group: str | None, ids: str, path: str
) -> None:
    limits = {"rlimits": {"nofile": 1024}} if path == "fork" else {}
    spec = {
        "argv": ["/bin/sh", "-c", "echo $(id -u) $(id -g) groups=$(id -G)"],
        "cwd": "/",
        "user": user,
        **limits,
    }
    manager = make_manager(types=types(who={**spec, **({"group": group} if group else {})}))
    ended = await wait_end(manager, (await manager.start("who", {}, None, CALLER)).id)
    assert ended.state is TaskState.SUCCEEDED, ended.error
    out = Path(ended.log_path).read_text().strip()
    assert out.startswith(ids + " groups="), out
    assert "0" not in out.split("groups=")[1].split()  # root's groups are gone


@pytest.mark.skipif(os.geteuid() != 0, reason="user lookups are the same, but only root gets past them")
async def test_an_unknown_user_fails_the_spawn(make_manager: MakeManager) -> None:
    manager = make_manager(types=types(who={"argv": py("pass"), "user": "no-such-user-pymgr"}))
    ended = await wait_end(manager, (await manager.start("who", {}, None, CALLER)).id)
    assert (ended.state, ended.error) == (TaskState.FAILED, "spawn failed: no such user 'no-such-user-pymgr'")


@pytest.mark.skipif(os.geteuid() == 0, reason="as root, switching users is allowed: tested above")
async def test_switching_users_needs_root(make_manager: MakeManager) -> None:
    manager = make_manager(types=types(who={"argv": py("pass"), "user": "root"}))
    ended = await wait_end(manager, (await manager.start("who", {}, None, CALLER)).id)
    assert re.match(
        r"^spawn failed: cannot run as user 'root' group None: the keeper runs as uid \d+", ended.error or ""
    )
