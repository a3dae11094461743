"""The starts of one loop turn share one commit (intake.py), against everything else the manager does meanwhile (real keeper, real store)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from taskhelpers import CALLER, TYPES, MakeManager, fail_statements, py, tasks_config, wait_end, wait_running

from pymgr.config import TaskTypeConfig
from pymgr.errors import Conflict, Unavailable
from pymgr.protocol.keeper import Request, Spawn
from pymgr.tasks.manager import TaskManager
from pymgr.tasks.states import TaskState
from pymgr.tasks.store import SqliteStore


async def first_and_staged(manager: TaskManager) -> tuple[asyncio.Task[Any], asyncio.Task[Any]]:
    """Two starts in one loop turn: the first committed at once, the second staged in the open group."""
    first = asyncio.create_task(manager.start("exit", {"code": 0}, None, CALLER))
    second = asyncio.create_task(manager.start("exit", {"code": 0}, None, CALLER))
    await asyncio.sleep(0)
    assert first.done() and manager._intake.waiting
    return first, second


async def test_a_start_is_answered_when_the_keeper_link_breaks_before_its_spawn(manager: TaskManager) -> None:
    await manager.open()
    first, second = await first_and_staged(manager)
    assert manager._link._writer is not None
    manager._link._writer.close()  # breaking: the reader has not noticed yet, so the spawn request fails
    record = await asyncio.wait_for(second, 5)
    assert (await wait_end(manager, record.id)).state is TaskState.SUCCEEDED  # sent again after the reconnect


async def test_queued_events_come_in_start_order_when_a_read_commits_a_group_early(
    manager: TaskManager,
) -> None:
    await manager.open()
    with manager.events.subscribe() as events:

        async def listing() -> None:
            manager.list_runs()  # commits the group of the two starts before it; its announcing waits for the loop

        starts = [
            asyncio.create_task(manager.start("exit", {"code": 0}, None, CALLER)),
            asyncio.create_task(manager.start("exit", {"code": 0}, None, CALLER)),
            asyncio.create_task(listing()),
            asyncio.create_task(manager.start("exit", {"code": 0}, None, CALLER)),
        ]
        await asyncio.gather(*starts)
        queued = [e.data["id"] for e in events.pending() if e.data.get("state") == "queued"]
    assert len(queued) == 3 and queued == sorted(queued)


async def test_a_log_that_cannot_be_deleted_after_the_commit_loses_no_start(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager(max_records=2)
    await manager.open()
    old = await manager.start("exit", {"code": 0}, None, CALLER)
    await wait_end(manager, old.id)

    def refused(task_id: int) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(manager.logs, "remove", refused)
    first, second = await first_and_staged(manager)  # the second's prune drops the old run: its log cannot go
    manager.list_runs()  # an unrelated read commits the group: it must not fail for it
    monkeypatch.undo()
    record = await asyncio.wait_for(second, 5)
    assert (await wait_end(manager, record.id)).state is TaskState.SUCCEEDED


async def test_a_restart_is_committed_before_its_spawn_request_leaves(tmp_path: Path) -> None:
    types = {
        "fail": TaskTypeConfig.model_validate(
            {
                "argv": py("import sys; sys.exit(1)"),
                "restart": "on-failure",
                "restart_delay_s": 0,
                "restart_delay_max_s": 0,
                "max_attempts": 2,
            }
        )
    }
    manager = TaskManager(tasks_config(types=types), tmp_path / "state")
    try:
        await manager.open()
        store, link = manager._store, manager._link
        assert isinstance(store, SqliteStore)
        order: list[str] = []
        execute, send = store._execute, link.send

        def noting_execute(what: str, sql: str, args: Any = ()) -> Any:
            if sql == "COMMIT" or sql.startswith("INSERT INTO runs"):
                order.append(sql.split()[0])
            return execute(what, sql, args)

        def noting_send(message: Request) -> None:
            if isinstance(message, Spawn):
                order.append(f"spawn {message.id}")
            send(message)

        store._execute, link.send = noting_execute, noting_send  # type: ignore[method-assign]
        first = await manager.start("fail", {}, None, CALLER)
        async with asyncio.timeout(15):
            while len(manager.list_runs()) < 2 or manager.list_runs()[0].state not in (TaskState.FAILED,):
                await asyncio.sleep(0.02)
        retry = order.index(f"spawn {first.id + 1}")
        assert order[:retry][-2:] == ["INSERT", "COMMIT"], order  # its record, committed, then its spawn
    finally:
        await manager.aclose()


def limited(**changes: dict[str, Any]) -> dict[str, TaskTypeConfig]:
    """The test types, with some settings of some types changed."""
    return {
        name: TaskTypeConfig.model_validate({**spec, **changes.get(name, {})}) for name, spec in TYPES.items()
    }


async def test_a_keeper_link_that_breaks_in_the_middle_of_a_pump_loses_no_slot(
    make_manager: MakeManager,
) -> None:
    manager = make_manager(types=limited(exit={"max_concurrent": 3}))
    await manager.open()
    starts = [asyncio.create_task(manager.start("exit", {"code": 0}, None, CALLER)) for _ in range(3)]
    await asyncio.sleep(0)
    assert starts[0].done() and manager._intake.waiting
    assert manager._link._writer is not None
    manager._link._writer.close()  # the second start's spawn fails: the third is taken but never sent
    for start in starts:
        record = await asyncio.wait_for(start, 5)
        assert (await wait_end(manager, record.id)).state is TaskState.SUCCEEDED
    assert manager._queue.busy("exit") == 0 and not manager._table.slots


async def test_a_stop_is_not_failed_by_a_group_that_cannot_commit_and_the_run_stays_queued_till_then(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager(types=limited(sleep={"max_concurrent": 1, "stop_grace_s": 0.5}))
    await manager.open()
    running = await manager.start("sleep", {}, None, CALLER)
    await wait_running(manager, running.id)
    await asyncio.sleep(0)  # the next loop turn
    waiting = await manager.start("sleep", {}, None, CALLER)  # queued behind the limit
    await asyncio.sleep(0.01)
    first, second = await first_and_staged(manager)
    stopped = await manager.stop(waiting.id, CALLER)  # the group waits in memory: the stop commits alone
    fail_statements(monkeypatch, manager, "COMMIT", "database or disk is full", times=1)  # the group's
    with pytest.raises(Unavailable, match="database or disk is full"):
        await second
    monkeypatch.undo()
    assert stopped.state is TaskState.STOPPED and waiting.id not in manager._queue

    # And a stop whose own write fails leaves the run queued, spawned once the slot frees.
    also_waiting = await manager.start("sleep", {}, None, CALLER)
    fail_statements(monkeypatch, manager, "UPDATE", "disk I/O error")
    with pytest.raises(Unavailable):
        await manager.stop(also_waiting.id, CALLER)
    monkeypatch.undo()
    assert also_waiting.id in manager._queue
    await manager.stop(running.id, CALLER)
    await wait_running(manager, also_waiting.id)


async def test_a_freed_slot_does_not_wait_for_a_restarts_back_off(make_manager: MakeManager) -> None:
    types = limited(sleep={"max_concurrent": 1, "stop_grace_s": 0.5})
    types["fail"] = TaskTypeConfig.model_validate(
        {
            "argv": py("import sys; sys.exit(1)"),
            "restart": "on-failure",
            "restart_delay_s": 30,
            "restart_delay_max_s": 30,
            "max_attempts": 2,
        }
    )
    manager = make_manager(types=types)
    await manager.open()
    failed = await manager.start("fail", {}, None, CALLER)
    await wait_end(manager, failed.id)  # its restart waits 30 s: the pump's timer is armed for then
    first = await manager.start("sleep", {}, None, CALLER)
    await wait_running(manager, first.id)
    second = await manager.start("sleep", {}, None, CALLER)
    await manager.stop(first.id, CALLER)
    await wait_end(manager, first.id)
    async with asyncio.timeout(5):
        await wait_running(manager, second.id)


async def test_a_run_whose_spawn_request_cannot_be_sent_fails_alone(make_manager: MakeManager) -> None:
    types = limited()
    types["big"] = TaskTypeConfig.model_validate(
        {
            "argv": ["{python}", "-c", "pass", *["{a}"] * 6],
            "params": {"a": {"type": "str", "max_length": 200_000}},
        }
    )  # six copies of a 200 kB parameter: a spawn request larger than the keeper link's 1 MiB frames
    manager = make_manager(types=types)
    await manager.open()
    big = await asyncio.wait_for(manager.start("big", {"a": "x" * 200_000}, None, CALLER), 5)
    ended = await wait_end(manager, big.id)
    assert ended.state is TaskState.FAILED
    assert ended.error is not None and ended.error.startswith(
        "spawn failed: the request cannot be sent: frame of "
    )
    for _ in range(2):  # the queue goes on
        record = await asyncio.wait_for(manager.start("exit", {"code": 0}, None, CALLER), 5)
        assert (await wait_end(manager, record.id)).state is TaskState.SUCCEEDED


async def test_runs_whose_requests_could_not_leave_are_tried_again_without_a_reconnect(
    manager: TaskManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    await manager.open()
    send_spawn = manager._spawns.send_spawn
    refusals = [1]

    def refused_once(record: Any) -> None:
        if refusals:
            refusals.pop()
            raise Unavailable("the store could not be read")  # what a failed read in the pump raises
        send_spawn(record)

    monkeypatch.setattr(manager._spawns, "send_spawn", refused_once)
    record = await manager.start(
        "exit", {"code": 0}, None, CALLER
    )  # answered: its request waits in the queue
    assert record.id in manager._queue and manager.keeper_connected
    assert (await wait_end(manager, record.id)).state is TaskState.SUCCEEDED  # tried again after PUMP_RETRY_S


async def test_a_start_with_the_key_of_a_start_waiting_in_its_turn_gets_that_run(
    manager: TaskManager,
) -> None:
    await manager.open()
    first = asyncio.create_task(manager.start("exit", {"code": 0}, None, CALLER))  # committed at once
    same = asyncio.create_task(
        manager.start("exit", {"code": 0}, "k", CALLER)
    )  # waits for the end of the turn
    held = asyncio.create_task(manager.start("exit", {"code": 0}, "k", CALLER))
    other = asyncio.create_task(manager.start("sleep", {}, "k", CALLER))
    with pytest.raises(
        Conflict, match=r"^key 'k' is held by a task starting now of type 'exit', not 'sleep'$"
    ):
        await other
    assert (await held).id == (await same).id == (await first).id + 1
    assert [r.id for r in manager.list_runs(key="k")] == [(await same).id]
