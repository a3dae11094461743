"""``SCAN_MODULE`` through dispatch: legacy ``task_ids``, idempotent start, stop."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pymgr.config import TasksConfig
from pymgr.core.dispatch import Call, Dispatcher
from pymgr.core.identity import Identity
from pymgr.core.registry import ModuleContext, Registry
from pymgr.errors import NotFound, ParamsInvalid
from pymgr.modules.scan import MAX_TASK_IDS, Scan
from pymgr.tasks.manager import TaskManager

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LEGACY = Identity(transport="legacy", peer="127.0.0.1:50000")

SCAN_PARAMS = {
    "task_id": {"type": "int", "min": 0},
    "duration": {"type": "float", "default": 30, "min": 0},
    "exit_code": {"type": "int", "default": 0, "min": 0, "max": 255},
    "fork_child": {"type": "bool", "default": False},
}

#: The demo's scan type (examples/demo.toml declares the same).
DEMO_SCAN = {
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
    "params": SCAN_PARAMS,
}

#: A scan that exits at once, for the tests that start many.
QUICK_SCAN = {"argv": [shutil.which("true") or "/bin/true", "{task_id}"], "params": SCAN_PARAMS}


def make_dispatcher(manager: TaskManager) -> Dispatcher:
    registry = Registry()
    registry.add(Scan(ModuleContext(tasks=manager)))
    return Dispatcher(registry)


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[TaskManager]:
    manager = TaskManager(
        TasksConfig.model_validate({"stop_grace_s": 2.0, "types": {"scan": DEMO_SCAN}}), tmp_path
    )
    yield manager
    await manager.aclose()


@pytest.fixture
def dispatcher(manager: TaskManager) -> Dispatcher:
    return make_dispatcher(manager)


async def scan(dispatcher: Dispatcher, action: str, task_ids: Any) -> Any:
    return await dispatcher.call(Call("SCAN_MODULE", action, {"task_ids": task_ids}, LEGACY))


def keys(manager: TaskManager, state: str | None = None) -> list[str | None]:
    return sorted(r.key for r in manager.list_runs(state=state) if r.key)


async def wait_ended(manager: TaskManager) -> None:
    async with asyncio.timeout(15):
        for record in manager.list_runs():
            await manager.wait(record.id)


@pytest.mark.parametrize("task_ids", ["1,2", " 1 , 2 ", [1, 2], ["1", "2"], "2,1"])
async def test_start_accepts_string_and_list(
    dispatcher: Dispatcher, manager: TaskManager, task_ids: Any
) -> None:
    assert await scan(dispatcher, "start", task_ids) == "start ok"
    assert keys(manager) == ["scan:1", "scan:2"]
    record = manager.list_runs(key="scan:1")[0]
    assert record.type == "scan"
    assert record.params == {"task_id": 1, "duration": 30.0, "exit_code": 0, "fork_child": False}
    assert record.started_by == LEGACY.to_dict()


async def test_start_replies_before_anything_runs(dispatcher: Dispatcher, manager: TaskManager) -> None:
    assert await scan(dispatcher, "start", "7") == "start ok"
    assert [r.state.value for r in manager.list_runs()] == ["queued"]


async def test_duplicates_and_running_ids_are_skipped(dispatcher: Dispatcher, manager: TaskManager) -> None:
    await scan(dispatcher, "start", "1,1,2,1")
    assert keys(manager) == ["scan:1", "scan:2"]
    await asyncio.sleep(0.05)
    assert await scan(dispatcher, "start", "2,3") == "start ok"
    assert keys(manager) == ["scan:1", "scan:2", "scan:3"]
    assert len(manager.list_runs(key="scan:2")) == 1


async def test_stop_stops_and_skips_ids_not_running(dispatcher: Dispatcher, manager: TaskManager) -> None:
    await scan(dispatcher, "start", "1,2")
    await asyncio.sleep(0.05)
    assert await scan(dispatcher, "stop", "2,2,9") == "stop ok"
    assert manager.list_runs(key="scan:1")[0].cancel_source is None
    record = manager.list_runs(key="scan:2")[0]
    assert record.cancel_source == "user"
    final = await asyncio.wait_for(manager.wait(record.id), 15)
    assert (final.state.value, final.cancel_source) == ("stopped", "user")
    assert await scan(dispatcher, "stop", "2") == "stop ok"  # already stopped: skipped
    assert await scan(dispatcher, "stop", [5]) == "stop ok"  # never started: skipped
    assert len(manager.list_runs()) == 2


async def test_scan_can_start_again_after_it_ended(dispatcher: Dispatcher, manager: TaskManager) -> None:
    await scan(dispatcher, "start", "4")
    await scan(dispatcher, "stop", "4")
    await wait_ended(manager)
    await scan(dispatcher, "start", "4")
    assert [r.state.value for r in manager.list_runs(key="scan:4")] == ["queued", "stopped"]


@pytest.mark.parametrize(
    ("task_ids", "message"),
    [
        ("1,,x", r"task id #2 is empty: ''"),
        ("1,x", r"task id #2 is not a non-negative integer: 'x'"),
        ("", r"task id #1 is empty: ''"),
        ("1,-2", r"task id #2 is not a non-negative integer: '-2'"),
        ("1.5", r"task id #1 is not a non-negative integer: '1.5'"),
        ("١", r"task id #1 is not a non-negative integer: '١'"),
        ([1, -2], r"task id #2 is negative: -2"),
        ([True], r"task id #1 is not a non-negative integer: True"),
        ([1, 2.0], r"task id #2 is not a non-negative integer: 2.0"),
        ([], r"must name at least one task id"),
        (7, r"must be a list of ids or a string like \"1,2\", not int"),
        ({"a": 1}, r"must be a list of ids or a string like \"1,2\", not dict"),
    ],
)
async def test_bad_ids_are_params_invalid(
    dispatcher: Dispatcher, manager: TaskManager, task_ids: Any, message: str
) -> None:
    for action in ("start", "stop"):
        with pytest.raises(
            ParamsInvalid,
            match=rf"^bad params for SCAN_MODULE\.{action}: task_ids: Value error, {message} \(got ",
        ) as info:
            await scan(dispatcher, action, task_ids)
        assert info.value.legacy_code == 4
    assert manager.list_runs() == []


async def test_missing_task_ids(dispatcher: Dispatcher) -> None:
    with pytest.raises(ParamsInvalid, match=r"^bad params for SCAN_MODULE\.start: task_ids: Field required$"):
        await dispatcher.call(Call("SCAN_MODULE", "start", {}, LEGACY))


@pytest.mark.parametrize("action", ["start", "stop"])
async def test_max_ids_limit_both_sides(tmp_path: Path, action: str) -> None:
    config = {"types": {"scan": QUICK_SCAN}, "scan_max_task_ids": 5}
    manager = TaskManager(TasksConfig.model_validate(config), tmp_path)
    dispatcher = make_dispatcher(manager)
    assert await scan(dispatcher, action, "0,1,2,3,4") == f"{action} ok"
    with pytest.raises(
        ParamsInvalid,
        match=r"^task_ids: at most 5 ids per request \(\[tasks\] scan_max_task_ids\), got 6; nothing was started or stopped$",
    ):
        await scan(dispatcher, action, list(range(10, 16)))
    with pytest.raises(  # past the ceiling no config can raise: refused by the parameter's own schema
        ParamsInvalid,
        match=rf"^bad params for SCAN_MODULE\.{action}: task_ids: Value error, at most {MAX_TASK_IDS} task ids per request, got {MAX_TASK_IDS + 1} \(got ",
    ):
        await scan(dispatcher, action, list(range(MAX_TASK_IDS + 1)))
    assert len(manager.list_runs()) == (5 if action == "start" else 0)
    await wait_ended(manager)
    await manager.aclose()


async def test_without_a_scan_type_is_not_found(tmp_path: Path) -> None:
    manager = TaskManager(TasksConfig(), tmp_path)
    with pytest.raises(NotFound, match=r"^no task type 'scan'; types: \(none configured\)$"):
        await scan(make_dispatcher(manager), "start", "1")


async def test_demo_scan_runs_to_its_exit_code(dispatcher: Dispatcher, manager: TaskManager) -> None:
    record = await manager.start("scan", {"task_id": 3, "duration": 0.25, "exit_code": 7}, "scan:3", LEGACY)
    final = await asyncio.wait_for(manager.wait(record.id), 15)
    assert (final.state.value, final.exit_code) == ("failed", 7)
    lines = Path(final.log_path).read_text().splitlines()
    output = [line for line in lines if not line.startswith("PYMGR_PROGRESS ")]
    assert output[0] == "scan 3: 0%" and output[-1] == "scan 3: 100%"
    assert all(line.startswith("scan 3: ") and line.endswith("%") for line in output)
    progress = [line for line in lines if line.startswith("PYMGR_PROGRESS ")]
    assert progress[0] == "PYMGR_PROGRESS 0 scan 3" and progress[-1] == "PYMGR_PROGRESS 100 scan 3"
    assert (final.progress, final.progress_message) == (100.0, "scan 3")
