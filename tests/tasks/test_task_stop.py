"""Stopping runs with real signals: SIGTERM, grace, SIGKILL, escaped descendants, shutdown."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from pathlib import Path

import psutil
import pytest
from taskhelpers import CALLER, MakeManager, gone, py, tasks_config, wait_end, wait_log, wait_running

from pymgr.config import TaskTypeConfig
from pymgr.core.identity import INTERNAL
from pymgr.errors import NotFound
from pymgr.tasks.manager import TaskManager
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TaskState


async def started(manager: TaskManager, type: str, params: dict[str, object] | None = None) -> TaskRecord:
    """Start a run and wait until it printed "ready" (its signal handlers are in place)."""
    record = await manager.start(type, params or {}, None, CALLER)
    record = await wait_running(manager, record.id)
    await wait_log(record, "ready")
    return record


async def test_stop_ends_stopped_by_sigterm(manager: TaskManager) -> None:
    record = await started(manager, "sleep")
    reply = await manager.stop(record.id, CALLER)
    assert (reply.state, reply.cancel_source, reply.stopped_by) == (
        TaskState.RUNNING,
        "user",
        CALLER.to_dict(),
    )
    ended = await wait_end(manager, record.id)
    assert (ended.state, ended.signal, ended.exit_code, ended.cancel_source) == (
        TaskState.STOPPED,
        "SIGTERM",
        None,
        "user",
    )
    assert ended.error is None
    assert record.pid is not None and gone(record.pid)


async def test_stop_returns_at_once(manager: TaskManager) -> None:
    record = await started(manager, "stubborn")
    before = time.monotonic()
    reply = await manager.stop(record.id, CALLER)
    assert time.monotonic() - before < 0.2
    assert reply.state is TaskState.RUNNING


async def test_child_ignoring_sigterm_gets_sigkill_after_grace(manager: TaskManager) -> None:
    record = await started(manager, "stubborn")  # stop_grace_s = 0.5
    before = time.monotonic()
    await manager.stop(record.id, CALLER)
    ended = await wait_end(manager, record.id)
    took = time.monotonic() - before
    assert (ended.state, ended.signal, ended.cancel_source) == (TaskState.STOPPED, "SIGKILL", "user")
    assert 0.5 <= took < 3.0


async def test_grace_period_of_zero_kills_at_once(make_manager: MakeManager) -> None:
    manager = make_manager(stop_grace_s=0)
    record = await started(manager, "sleep")
    await manager.stop(record.id, CALLER)
    ended = await wait_end(manager, record.id)
    assert ended.state is TaskState.STOPPED and ended.signal in ("SIGTERM", "SIGKILL")


async def test_grandchild_that_called_setsid_is_gone_after_stop(manager: TaskManager) -> None:
    record = await manager.start("scan", {"task_id": 5, "fork_child": True}, "scan:5", CALLER)
    record = await wait_running(manager, record.id)
    log = await wait_log(record, "scan 5: 0%")
    grandchild = int(re.search(r"grandchild pid (\d+)", log).group(1))  # type: ignore[union-attr]
    assert os.getsid(grandchild) == grandchild != record.pid  # it escaped the run's session and group
    environ = psutil.Process(grandchild).environ()
    assert (environ["PYMGR_TASK_ID"], environ["PYMGR_TASK_MARKER"]) == (str(record.id), record.marker)
    await manager.stop(record.id, CALLER)
    ended = await wait_end(manager, record.id)
    assert (ended.state, ended.signal, ended.cancel_source) == (TaskState.STOPPED, "SIGTERM", "user")
    assert gone(grandchild)
    assert "scan 5: stopped by SIGTERM" in Path(ended.log_path).read_text()


#: A leader that starts a grandchild in its own session with an EMPTY environment
#: (no marker), then prints its pid: only the descendant scan can find it.
UNMARKED = py(
    "import subprocess, sys, time\n"
    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], env={}, start_new_session=True)\n"
    "print('ready', c.pid, flush=True)\n"
    "time.sleep(600)\n"
)


async def test_unmarked_descendant_is_found_while_the_leader_lives(make_manager: MakeManager) -> None:
    manager = make_manager(types={"unmarked": TaskTypeConfig(argv=UNMARKED)})
    record = await started(manager, "unmarked")
    grandchild = int(re.search(r"ready (\d+)", Path(record.log_path).read_text()).group(1))  # type: ignore[union-attr]
    assert "PYMGR_TASK_ID" not in psutil.Process(grandchild).environ()
    await manager.stop(record.id, CALLER)
    await wait_end(manager, record.id)
    assert gone(grandchild)


async def test_stop_of_ended_run_is_a_no_op(manager: TaskManager) -> None:
    record = await manager.start("exit", {"code": 0}, None, CALLER)
    ended = await wait_end(manager, record.id)
    assert await manager.stop(record.id, CALLER) == ended


async def test_second_stop_changes_nothing(manager: TaskManager) -> None:
    record = await started(manager, "sleep")
    first = await manager.stop(record.id, CALLER)
    assert await manager.stop(record.id, INTERNAL) == first
    assert (await wait_end(manager, record.id)).stopped_by == CALLER.to_dict()


async def test_stop_of_missing_id_is_not_found(manager: TaskManager) -> None:
    with pytest.raises(NotFound, match=r"^no task with id 4242; tasks\.list shows the ones that exist$"):
        await manager.stop(4242, CALLER)


async def test_stop_of_queued_run_never_spawns_it(make_manager: MakeManager) -> None:
    manager = make_manager(
        types={"one": TaskTypeConfig(argv=py("import time; time.sleep(60)"), max_concurrent=1)}
    )
    first = await wait_running(manager, (await manager.start("one", {}, None, CALLER)).id)
    record = await manager.start("one", {}, None, CALLER)  # waits for the slot
    stopped = await manager.stop(record.id, CALLER)
    assert (stopped.state, stopped.cancel_source, stopped.pid) == (TaskState.STOPPED, "user", None)
    await manager.stop(first.id, CALLER)
    await wait_end(manager, first.id)
    await asyncio.sleep(0.05)  # the freed slot has had its turn
    final = manager.get(record.id)
    assert (final.state, final.pid, final.started_at) == (TaskState.STOPPED, None, None)
    assert not Path(record.log_path).exists()


async def test_stop_right_after_start_ends_the_run(manager: TaskManager) -> None:
    """The spawn may already be on its way to the keeper: then the run is killed as soon as it exists."""
    record = await manager.start("sleep", {}, None, CALLER)
    stopped = await manager.stop(record.id, CALLER)
    assert stopped.cancel_source == "user"
    ended = await wait_end(manager, record.id)
    assert (ended.state, ended.cancel_source) == (TaskState.STOPPED, "user")
    assert ended.pid is None or gone(ended.pid)


async def test_process_exiting_on_its_own_during_stop_still_ends_stopped(make_manager: MakeManager) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(0.3)"
    manager = make_manager(types={"slowexit": TaskTypeConfig(argv=py(code), stop_grace_s=5)})
    record = await started(manager, "slowexit")
    before = time.monotonic()
    await manager.stop(record.id, CALLER)
    ended = await wait_end(manager, record.id)
    assert time.monotonic() - before < 2.0  # ended with the process, not at the end of the grace period
    assert (ended.state, ended.cancel_source, ended.exit_code, ended.signal) == (
        TaskState.STOPPED,
        "user",
        0,
        None,
    )


def own_threads() -> int:
    """Threads besides the loop's default executor, which the store's WAL checkpoint starts after a second."""
    return sum(not thread.name.startswith("asyncio_") for thread in threading.enumerate())


async def test_no_thread_per_child(make_manager: MakeManager) -> None:
    manager = make_manager(stop_grace_s=1.0)
    await asyncio.sleep(0)
    threads_before = own_threads()
    records = [await manager.start("binsleep", {}, None, CALLER) for _ in range(20)]
    for record in records:
        await wait_running(manager, record.id)
    assert all(psutil.pid_exists(manager.get(r.id).pid) for r in records)  # type: ignore[arg-type]
    assert own_threads() == threads_before
    for record in records:
        await manager.stop(record.id, CALLER)
    ended = [await wait_end(manager, r.id) for r in records]
    assert {(r.state, r.signal) for r in ended} == {(TaskState.STOPPED, "SIGTERM")}
    assert threading.active_count() == threads_before


async def test_aclose_stop_stops_every_active_run(make_manager: MakeManager) -> None:
    manager = make_manager(on_shutdown="stop")
    running = await started(manager, "sleep")
    stubborn = await started(manager, "stubborn")
    queued = await manager.start("sleep", {}, None, CALLER)
    before = time.monotonic()
    await manager.aclose()
    assert time.monotonic() - before < 0.5 + 2.0
    for record in (running, stubborn, queued):
        final = manager.get(record.id)
        assert (final.state, final.cancel_source, final.stopped_by) == (
            TaskState.STOPPED,
            "shutdown",
            INTERNAL.to_dict(),
        )
    assert manager.get(stubborn.id).signal == "SIGKILL"
    queued_pid = manager.get(queued.id).pid  # its spawn may have been on its way: then it was killed
    assert queued_pid is None or gone(queued_pid)
    assert gone(running.pid) and gone(stubborn.pid)  # type: ignore[arg-type]


async def test_aclose_waits_for_user_stops_in_progress(make_manager: MakeManager) -> None:
    manager = make_manager(on_shutdown="leave")
    record = await started(manager, "stubborn")
    await manager.stop(record.id, CALLER)
    await manager.aclose()
    final = manager.get(record.id)
    assert (final.state, final.cancel_source, final.signal) == (TaskState.STOPPED, "user", "SIGKILL")


async def test_aclose_leave_leaves_runs_to_the_next_manager(make_manager: MakeManager) -> None:
    manager = make_manager(on_shutdown="leave")
    record = await started(manager, "sleep")
    queued = await manager.start("sleep", {}, None, CALLER)
    await manager.aclose()
    assert record.pid is not None
    assert manager.get(record.id).state is TaskState.RUNNING and not gone(record.pid)
    # A queued run is accepted work: it stays for the next daemon (which spawns it, or finds it spawned).
    assert manager.get(queued.id).state in (TaskState.QUEUED, TaskState.RUNNING)
    assert manager.get(queued.id).cancel_source is None
    successor = make_manager(on_shutdown="stop")
    await successor.open()
    again = await wait_running(successor, queued.id)
    assert successor.get(record.id).pid == record.pid
    await successor.stop(record.id, CALLER)
    ended = await wait_end(successor, record.id)
    assert (ended.state, ended.signal, ended.cancel_source) == (TaskState.STOPPED, "SIGTERM", "user")
    await successor.aclose()
    assert successor.get(again.id).state is TaskState.STOPPED
    assert gone(record.pid) and gone(again.pid)  # type: ignore[arg-type]


async def test_leave_is_the_configured_choice_not_the_default() -> None:
    assert tasks_config().on_shutdown == "stop"
