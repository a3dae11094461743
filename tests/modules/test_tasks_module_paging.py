"""``tasks.list`` a page at a time: its limit (default and maximum from ``[tasks]``) and its cursor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

from pymgr.config import TasksConfig
from pymgr.core.dispatch import Call, Dispatcher
from pymgr.core.registry import ModuleContext, Registry
from pymgr.errors import ParamsInvalid
from pymgr.modules.tasks import Tasks
from pymgr.tasks.manager import TaskManager
from tests.modules.test_tasks_module import CALLER
from tests.tasks.test_task_store import record

#: A default page of 2 records, at most 3: both sides of each limit with a handful of records.
CONFIG = TasksConfig.model_validate({"list_limit": 2, "list_max_limit": 3})


@pytest.fixture
async def dispatcher(tmp_path: Path) -> AsyncIterator[Dispatcher]:
    manager = TaskManager(CONFIG, tmp_path)
    for n in range(5):
        manager._store.add(record("scan" if n % 2 else "backup"))
    registry = Registry()
    registry.add(Tasks(ModuleContext(tasks=manager)))
    yield Dispatcher(registry)
    await manager.aclose()


async def ids(dispatcher: Dispatcher, **params: Any) -> list[int]:
    return [r["id"] for r in await dispatcher.call(Call("tasks", "list", params, CALLER))]


async def test_a_page_is_list_limit_records_by_default(dispatcher: Dispatcher) -> None:
    assert await ids(dispatcher) == [5, 4]


async def test_the_limit_both_sides_of_each_bound(dispatcher: Dispatcher) -> None:
    assert await ids(dispatcher, limit=1) == [5]
    assert await ids(dispatcher, limit=3) == [5, 4, 3]
    with pytest.raises(
        ParamsInvalid,
        match=r"^bad params for tasks\.list: limit: Input should be greater than or equal to 1 \(got 0\)$",
    ):
        await ids(dispatcher, limit=0)
    with pytest.raises(
        ParamsInvalid,
        match=r"^bad params for tasks\.list: limit: at most 3 records a page \(\[tasks\] list_max_limit\), "
        r"not 4; ask for the next page with before=<the last id of this one>$",
    ) as caught:
        await ids(dispatcher, limit=4)
    assert caught.value.http_status == 400 and caught.value.legacy_code == 4


async def test_before_walks_the_pages_with_the_filters(dispatcher: Dispatcher) -> None:
    assert await ids(dispatcher, before=5) == [4, 3]
    assert await ids(dispatcher, before="3", limit="3") == [
        2,
        1,
    ]  # as a query string or a legacy line sends them
    assert await ids(dispatcher, before=1) == []
    assert await ids(dispatcher, type="scan", limit=1) == [4]
    assert await ids(dispatcher, type="scan", before=4) == [2]
    assert await ids(dispatcher, before=2**63 - 1, limit=1) == [5]


@pytest.mark.parametrize(
    ("before", "message"),
    [
        (
            "abc",
            r"before: Input should be a valid integer, unable to parse string as an integer \(got 'abc'\)",
        ),
        (
            "1.5",
            r"before: Input should be a valid integer, unable to parse string as an integer \(got '1\.5'\)",
        ),
        (0, r"before: Input should be greater than or equal to 1 \(got 0\)"),
        (
            2**63,
            r"before: Input should be less than or equal to 9223372036854775807 \(got 9223372036854775808\)",
        ),
    ],
)
async def test_a_bad_cursor_is_refused(dispatcher: Dispatcher, before: Any, message: str) -> None:
    with pytest.raises(ParamsInvalid, match=rf"^bad params for tasks\.list: {message}$"):
        await ids(dispatcher, before=before)


def test_the_default_limit_cannot_pass_the_maximum() -> None:
    assert TasksConfig.model_validate({"list_limit": 3, "list_max_limit": 3}).list_limit == 3
    with pytest.raises(pydantic.ValidationError, match=r"list_limit \(4\) must be <= list_max_limit \(3\)"):
        TasksConfig.model_validate({"list_limit": 4, "list_max_limit": 3})
