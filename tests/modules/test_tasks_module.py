"""The ``tasks`` module through dispatch: the single task API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pymgr.config import TasksConfig
from pymgr.core.dispatch import Call, Dispatcher
from pymgr.core.identity import Identity
from pymgr.core.registry import ModuleContext, Registry
from pymgr.errors import NotFound, ParamsInvalid, Unavailable
from pymgr.modules.tasks import Tasks
from pymgr.tasks.manager import MAX_KEY_CHARS, TaskManager

CALLER = Identity(transport="unix", uid=33, gid=33, pid=4321, user="www-data")

CONFIG = TasksConfig.model_validate(
    {
        "stop_grace_s": 2.0,
        "types": {
            "exit": {
                "argv": ["{python}", "-c", "import sys; sys.exit(int(sys.argv[1]))", "{code}"],
                "params": {"code": {"type": "int", "default": 0, "doc": "exit code"}},
                "doc": "exits with a code",
            },
            "sleep": {"argv": ["{python}", "-c", "import time; time.sleep(60)"]},
        },
    }
)


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[TaskManager]:
    manager = TaskManager(CONFIG, tmp_path)
    yield manager
    await manager.aclose()


@pytest.fixture
def dispatcher(manager: TaskManager) -> Dispatcher:
    registry = Registry()
    registry.add(Tasks(ModuleContext(tasks=manager)))
    return Dispatcher(registry)


async def call(dispatcher: Dispatcher, action: str, **params: Any) -> Any:
    return await dispatcher.call(Call("tasks", action, params, CALLER))


async def ended(dispatcher: Dispatcher, task_id: int) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while (record := await call(dispatcher, "show", id=task_id))["state"] in ("queued", "running"):
            await asyncio.sleep(0.02)
    return record  # type: ignore[no-any-return]


async def test_start_show_list(dispatcher: Dispatcher) -> None:
    started = await call(dispatcher, "start", type="exit", params={"code": 3}, key="job:1")
    assert started["state"] == "queued"
    assert started["started_by"] == CALLER.to_dict()
    assert started["key"] == "job:1"
    final = await ended(dispatcher, started["id"])
    assert (final["state"], final["exit_code"]) == ("failed", 3)
    assert await call(dispatcher, "list") == [final]
    assert await call(dispatcher, "list", state="failed", type="exit", key="job:1") == [final]
    assert await call(dispatcher, "list", state="running") == []


async def test_params_default_to_empty(dispatcher: Dispatcher) -> None:
    started = await call(dispatcher, "start", type="exit")
    assert started["params"] == {"code": 0}
    assert (await ended(dispatcher, started["id"]))["state"] == "succeeded"


async def test_stop(dispatcher: Dispatcher) -> None:
    started = await call(dispatcher, "start", type="sleep")
    stopped = await call(dispatcher, "stop", id=started["id"])
    assert stopped["cancel_source"] == "user"
    final = await ended(dispatcher, started["id"])
    assert (final["state"], final["stopped_by"]) == ("stopped", CALLER.to_dict())


async def test_types(dispatcher: Dispatcher) -> None:
    types = await call(dispatcher, "types")
    assert [t["name"] for t in types] == ["exit", "sleep"]
    assert types[0]["doc"] == "exits with a code"
    assert types[0]["params"]["properties"]["code"]["description"] == "exit code"


def test_schema_hides_the_caller_and_marks_read_only(dispatcher: Dispatcher) -> None:
    described = {a["name"]: a for a in dispatcher.registry.describe()[0]["actions"]}
    assert set(described) == {"list", "show", "counts", "types", "start", "stop", "logs", "events"}
    assert {name for name, a in described.items() if a["read_only"]} == {
        "list",
        "show",
        "counts",
        "types",
        "logs",
        "events",
    }
    assert set(described["start"]["params"]["properties"]) == {"type", "params", "key"}
    assert set(described["stop"]["params"]["properties"]) == {"id"}


async def test_errors_pass_through(dispatcher: Dispatcher) -> None:
    with pytest.raises(NotFound, match=r"^no task type 'nope'; types: exit, sleep$"):
        await call(dispatcher, "start", type="nope")
    with pytest.raises(NotFound, match=r"^no task with id 77; "):
        await call(dispatcher, "show", id=77)
    with pytest.raises(NotFound, match=r"^no task with id 77; "):
        await call(dispatcher, "stop", id=77)
    with pytest.raises(
        ParamsInvalid,
        match=r"^state: must be one of queued, running, succeeded, failed, stopped, timed_out, lost; not 'x'$",
    ):
        await call(dispatcher, "list", state="x")
    with pytest.raises(
        ParamsInvalid,
        match=r"^bad params for task type 'exit': code: Value error, must be a whole number in decimal digits",
    ):
        await call(dispatcher, "start", type="exit", params={"code": "three"})
    with pytest.raises(
        ParamsInvalid, match=r"^bad params for tasks\.show: id: Input should be a valid integer"
    ):
        await call(dispatcher, "show", id="x")


async def test_key_length_both_sides(dispatcher: Dispatcher) -> None:
    await call(dispatcher, "start", type="exit", key="k" * MAX_KEY_CHARS)
    with pytest.raises(
        ParamsInvalid,
        match=rf"^bad params for tasks\.start: key: String should have at most {MAX_KEY_CHARS} characters",
    ):
        await call(dispatcher, "start", type="exit", key="k" * (MAX_KEY_CHARS + 1))


async def test_without_a_manager_is_unavailable() -> None:
    registry = Registry()
    registry.add(Tasks())
    with pytest.raises(Unavailable, match=r"^this daemon runs no task manager; the tasks module needs one$"):
        await Dispatcher(registry).call(Call("tasks", "list", {}, CALLER))
