"""The task manager with real processes: start, exit, records, keys, errors."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from taskhelpers import CALLER, MakeManager, fail_statements, tasks_config, wait_end, wait_running

from pymgr.core.identity import INTERNAL
from pymgr.errors import Conflict, NotFound, ParamsInvalid, Unavailable
from pymgr.keeper.proctree import start_time
from pymgr.tasks.manager import MAX_KEY_CHARS, TaskManager
from pymgr.tasks.states import TaskState
from pymgr.tasks.store import SqliteStore


async def test_start_replies_queued_before_the_spawn(manager: TaskManager) -> None:
    record = await manager.start("exit", {"code": 0}, None, CALLER)
    assert record.state is TaskState.QUEUED
    assert record.pid is None
    assert record.started_by == CALLER.to_dict()
    assert not Path(record.log_path).exists()
    running = await wait_running(manager, record.id)
    assert running.pid is not None


async def test_a_lone_start_commits_at_once_and_the_rest_of_its_turn_share_one_commit(
    manager: TaskManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    await manager.open()
    store = manager._store
    assert isinstance(store, SqliteStore)
    sizes = []
    execute, counted = store._execute, [len(store)]

    def counting(what: str, sql: str, args: Any = ()) -> Any:
        result = execute(what, sql, args)
        if sql == "COMMIT" and len(store) != counted[0]:  # the commits that stored runs, and how many
            sizes.append(len(store) - counted[0])
            counted[0] = len(store)
        return result

    monkeypatch.setattr(store, "_execute", counting)
    records = await asyncio.gather(*(manager.start("exit", {"code": 0}, None, CALLER) for _ in range(5)))
    assert sizes == [
        1,
        4,
    ]  # the first of the turn at once (it waits for nothing), the burst after it together
    assert [r.id for r in records] == list(range(records[0].id, records[0].id + 5))
    lone = await manager.start("exit", {"code": 0}, None, CALLER)
    assert sizes == [1, 4, 1]
    for record in [*records, lone]:
        assert (await wait_end(manager, record.id)).state is TaskState.SUCCEEDED


async def test_a_group_that_cannot_commit_fails_each_of_its_starts_and_spawns_nothing(
    manager: TaskManager, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    await manager.open()
    store = manager._store
    fail_statements(monkeypatch, manager, "COMMIT", "disk I/O error")
    results = await asyncio.gather(
        *(manager.start("exit", {"code": 0}, None, CALLER) for _ in range(3)), return_exceptions=True
    )
    monkeypatch.undo()
    assert [type(r) for r in results] == [Unavailable] * 3
    assert all("disk I/O error" in str(r) for r in results)
    await asyncio.sleep(0.2)
    assert manager.list_runs() == [] and len(store) == 0
    assert not list((tmp_path / "state" / "logs").iterdir())  # nothing was spawned
    later = await manager.start("exit", {"code": 0}, None, CALLER)  # the store works again
    assert (await wait_end(manager, later.id)).state is TaskState.SUCCEEDED


async def test_a_start_whose_caller_left_while_its_group_committed_still_runs(manager: TaskManager) -> None:
    await manager.open()
    first = asyncio.create_task(manager.start("exit", {"code": 0}, None, CALLER))
    second = asyncio.create_task(manager.start("exit", {"code": 0}, None, CALLER))
    await asyncio.sleep(0)
    assert first.done() and manager._intake.waiting  # the second is staged, waiting for the end of the turn
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert len(manager.list_runs()) == 2
    for record in manager.list_runs():
        assert (await wait_end(manager, record.id)).state is TaskState.SUCCEEDED


async def test_run_succeeds_with_exit_code_zero(manager: TaskManager) -> None:
    record = await manager.start("exit", {"code": "0"}, None, CALLER)
    running = await wait_running(manager, record.id)
    assert running.state is TaskState.RUNNING
    assert running.pid_start_time is not None and running.started_at is not None
    ended = await wait_end(manager, record.id)
    assert (ended.state, ended.exit_code, ended.signal, ended.error) == (TaskState.SUCCEEDED, 0, None, None)
    assert ended.params == {"code": 0}
    assert ended.created_at <= ended.started_at <= ended.ended_at  # type: ignore[operator]
    assert ended.log_path == str(Path(ended.log_path).parent / f"{ended.id}.log")


async def test_run_fails_with_exit_code_3(manager: TaskManager) -> None:
    record = await manager.start("exit", {"code": 3}, None, CALLER)
    ended = await wait_end(manager, record.id)
    assert (ended.state, ended.exit_code, ended.signal) == (TaskState.FAILED, 3, None)


async def test_run_killed_by_a_signal_records_its_name(manager: TaskManager) -> None:
    record = await manager.start("selfkill", {}, None, CALLER)
    ended = await wait_end(manager, record.id)
    assert (ended.state, ended.exit_code, ended.signal, ended.cancel_source) == (
        TaskState.FAILED,
        None,
        "SIGUSR1",
        None,
    )


async def test_spawn_failure_enoent(manager: TaskManager) -> None:
    record = await manager.start("missing", {}, None, CALLER)
    ended = await wait_end(manager, record.id)
    assert ended.state is TaskState.FAILED
    assert ended.pid is None and ended.started_at is None and ended.ended_at is not None
    assert ended.error == "spawn failed: No such file or directory: '/nonexistent/pymgr-test-program'"


async def test_spawn_failure_bad_cwd(manager: TaskManager) -> None:
    ended = await wait_end(manager, (await manager.start("badcwd", {}, None, CALLER)).id)
    assert ended.state is TaskState.FAILED
    assert ended.error == "spawn failed: No such file or directory: '/nonexistent/pymgr-test-dir'"


async def test_output_goes_to_the_log_file(manager: TaskManager) -> None:
    record = await manager.start("echo", {"arg": "hi"}, None, CALLER)
    ended = await wait_end(manager, record.id)
    assert Path(ended.log_path).read_text() == '["hi", "--arg=hi"]\n'
    assert Path(ended.log_path).stat().st_mode & 0o777 == 0o600


async def test_environment_is_exactly_the_types_env_plus_marker(manager: TaskManager) -> None:
    record = await manager.start("env", {}, None, CALLER)
    ended = await wait_end(manager, record.id)
    env = json.loads(Path(ended.log_path).read_text())
    env.pop("LC_CTYPE", None)  # Python's own UTF-8 coercion may add it
    assert env == {
        "LANG": "C.UTF-8",
        "GREETING": "hello",
        "PYMGR_TASK_ID": str(record.id),
        "PYMGR_TASK_MARKER": record.marker,
    }
    assert re.fullmatch(r"[0-9a-f]{16}", record.marker)


async def test_pid_start_time_is_the_kernels(manager: TaskManager) -> None:
    record = await wait_running(manager, (await manager.start("sleep", {}, None, CALLER)).id)
    assert record.pid is not None
    assert record.pid_start_time == start_time(record.pid)
    fields = Path(f"/proc/{record.pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert record.pid_start_time == int(fields[19])


async def test_unknown_type_is_not_found(manager: TaskManager) -> None:
    with pytest.raises(
        NotFound,
        match=r"^no task type 'nope'; types: badcwd, binsleep, echo, env, exit, missing, scan, selfkill, sleep, stubborn$",
    ):
        await manager.start("nope", {}, None, CALLER)


async def test_unknown_type_with_no_types_configured(tmp_path: Path) -> None:
    manager = TaskManager(tasks_config(types={}), tmp_path)
    with pytest.raises(NotFound, match=r"^no task type 'scan'; types: \(none configured\)$"):
        await manager.start("scan", {}, None, CALLER)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, r"^bad params for task type 'exit': code: Field required$"),
        (
            {"code": "x"},
            r"^bad params for task type 'exit': code: Value error, must be a whole number in decimal digits, like 7 or -7 "
            r"\(no spaces, no '\+', no fraction\) \(got 'x'\)$",
        ),
        (
            {"code": 1, "extra": 2},
            r"^bad params for task type 'exit': extra: Extra inputs are not permitted \(got 2\)$",
        ),
        ([1], r"^params of task type 'exit' must be an object of name: value, not list$"),
    ],
)
async def test_bad_params_are_params_invalid(manager: TaskManager, params: Any, message: str) -> None:
    with pytest.raises(ParamsInvalid, match=message):
        await manager.start("exit", params, None, CALLER)
    assert manager.list_runs() == []


async def test_scan_params_limits_both_sides(manager: TaskManager) -> None:
    ok = await manager.start("scan", {"task_id": 0, "duration": 0, "exit_code": 255}, None, CALLER)
    assert ok.params == {"task_id": 0, "duration": 0.0, "exit_code": 255, "fork_child": False}
    with pytest.raises(
        ParamsInvalid,
        match=r"^bad params for task type 'scan': exit_code: Input should be less than or equal to 255 \(got 256\)$",
    ):
        await manager.start("scan", {"task_id": 0, "exit_code": 256}, None, CALLER)
    with pytest.raises(
        ParamsInvalid,
        match=r"^bad params for task type 'scan': task_id: Input should be greater than or equal to 0 \(got -1\)$",
    ):
        await manager.start("scan", {"task_id": -1}, None, CALLER)


async def test_start_by_key_is_idempotent(manager: TaskManager) -> None:
    first = await manager.start("sleep", {}, "job:1", CALLER)
    again = await manager.start("sleep", {}, "job:1", INTERNAL)
    assert again == first
    await wait_running(manager, first.id)
    assert (await manager.start("sleep", {}, "job:1", CALLER)).id == first.id
    other = await manager.start("sleep", {}, "job:2", CALLER)
    assert other.id != first.id
    assert len(manager.list_runs(type="sleep")) == 2


async def test_key_is_free_again_once_the_run_ended(manager: TaskManager) -> None:
    first = await manager.start("exit", {"code": 0}, "k", CALLER)
    await wait_end(manager, first.id)
    second = await manager.start("exit", {"code": 0}, "k", CALLER)
    assert second.id > first.id


async def test_key_held_by_another_type_is_a_conflict(manager: TaskManager) -> None:
    held = await manager.start("sleep", {}, "k", CALLER)
    with pytest.raises(
        Conflict, match=rf"^key 'k' is held by task {held.id} of type 'sleep', not 'binsleep'$"
    ):
        await manager.start("binsleep", {}, "k", CALLER)


async def test_key_length_limit_both_sides(manager: TaskManager) -> None:
    await manager.start("exit", {"code": 0}, "k" * MAX_KEY_CHARS, CALLER)
    with pytest.raises(
        ParamsInvalid, match=rf"^key: must be at most {MAX_KEY_CHARS} characters, got {MAX_KEY_CHARS + 1}$"
    ):
        await manager.start("exit", {"code": 0}, "k" * (MAX_KEY_CHARS + 1), CALLER)
    with pytest.raises(ParamsInvalid, match=r"^key: must be a non-empty string or null, not ''$"):
        await manager.start("exit", {"code": 0}, "", CALLER)


async def test_a_key_given_twice_in_one_start_many_is_refused_and_nothing_starts(
    manager: TaskManager,
) -> None:
    starts = [({"code": 0}, "dup"), ({"code": 0}, None), ({"code": 0}, "dup"), ({"code": 0}, "other")]
    with pytest.raises(ParamsInvalid, match=r"^key: given more than once in one start: dup$"):
        await manager.start_many("exit", starts, CALLER)
    assert manager.list_runs() == []
    ok = await manager.start_many("exit", [({"code": 0}, "dup"), ({"code": 0}, None)], CALLER)
    assert [r.key for r in ok] == ["dup", None]


async def test_get_missing_is_not_found(manager: TaskManager) -> None:
    with pytest.raises(NotFound, match=r"^no task with id 99; tasks\.list shows the ones that exist$"):
        manager.get(99)
    with pytest.raises(NotFound, match=r"^no task with id 99; "):
        await manager.wait(99)


async def test_list_filters_and_orders_newest_first(manager: TaskManager) -> None:
    a = await manager.start("exit", {"code": 0}, "a", CALLER)
    b = await manager.start("sleep", {}, None, CALLER)
    await wait_end(manager, a.id)
    await wait_running(manager, b.id)
    assert [r.id for r in manager.list_runs()] == [b.id, a.id]
    assert [r.id for r in manager.list_runs(state="running")] == [b.id]
    assert [r.id for r in manager.list_runs(state=TaskState.SUCCEEDED)] == [a.id]
    assert [r.id for r in manager.list_runs(type="exit")] == [a.id]
    assert [r.id for r in manager.list_runs(key="a")] == [a.id]


async def test_list_bad_state_names_the_valid_ones(manager: TaskManager) -> None:
    with pytest.raises(
        ParamsInvalid,
        match=r"^state: must be one of queued, running, succeeded, failed, stopped, timed_out, lost; not 'done'$",
    ):
        manager.list_runs(state="done")


async def test_describe_types(manager: TaskManager) -> None:
    types = manager.describe_types()
    assert [t["name"] for t in types] == sorted(t["name"] for t in types)
    scan = next(t for t in types if t["name"] == "scan")
    assert set(scan["params"]["properties"]) == {"task_id", "duration", "exit_code", "fork_child"}
    assert scan["params"]["required"] == ["task_id"]


async def test_ids_continue_after_existing_logs(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    for name in ("7.log", "12.log", "x.log", "99.txt"):
        (tmp_path / "logs" / name).write_text("")
    manager = TaskManager(tasks_config(), tmp_path)
    record = await manager.start("missing", {}, None, CALLER)
    assert record.id == 13
    await wait_end(manager, record.id)
    await manager.aclose()


async def test_max_records_drops_the_oldest_ended(make_manager: MakeManager) -> None:
    manager = make_manager(max_records=2)
    ids = []
    for _ in range(3):
        record = await manager.start("exit", {"code": 0}, None, CALLER)
        await wait_end(manager, record.id)
        ids.append(record.id)
    assert [r.id for r in manager.list_runs()] == [ids[2], ids[1]]
    with pytest.raises(NotFound):
        manager.get(ids[0])


async def test_start_after_aclose_is_unavailable(manager: TaskManager) -> None:
    await manager.aclose()
    await manager.aclose()  # idempotent
    with pytest.raises(Unavailable, match=r"^the task manager is shutting down; no new task can start$"):
        await manager.start("exit", {"code": 0}, None, CALLER)


async def test_times_come_from_the_clock(tmp_path: Path) -> None:
    now = [datetime(2024, 1, 1, tzinfo=timezone.utc)]

    def clock() -> datetime:
        now[0] += timedelta(seconds=1)
        return now[0]

    manager = TaskManager(tasks_config(), tmp_path, clock=clock)
    record = await manager.start("missing", {}, None, CALLER)
    ended = await wait_end(manager, record.id)
    await manager.aclose()
    assert ended.to_dict()["created_at"] == "2024-01-01T00:00:01.000+00:00"
    assert ended.ended_at is not None and ended.ended_at > ended.created_at


async def test_one_log_line_per_transition_in_one_shape(
    manager: TaskManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pymgr.tasks")
    record = await manager.start("exit", {"code": 3}, None, CALLER)
    await wait_end(manager, record.id)
    lines = [r.getMessage() for r in caplog.records if r.name == "pymgr.tasks"]
    shape = rf"^ *\d+\.\d\ds . task {record.id} exit: "
    assert len(lines) == 3 and all(re.match(shape, line) for line in lines), lines
    assert lines[0].endswith(": queued by unix user=www-data uid=33")
    assert re.search(r": running pid \d+$", lines[1])
    assert lines[2].endswith(": failed exit 3")


async def test_runs_under_uvloop(tmp_path: Path) -> None:
    """The daemon's loop is uvloop: pidfd watching must work there too."""
    uvloop = pytest.importorskip("uvloop")

    async def run() -> tuple[TaskState, int | None]:
        manager = TaskManager(tasks_config(), tmp_path)
        record = await manager.start("exit", {"code": 4}, None, CALLER)
        ended = await asyncio.wait_for(manager.wait(record.id), 15)
        await manager.aclose()
        return ended.state, ended.exit_code

    # A separate thread owns the uvloop loop, since this test already runs inside a loop.
    result = await asyncio.to_thread(lambda: asyncio.Runner(loop_factory=uvloop.new_event_loop).run(run()))
    assert result == (TaskState.FAILED, 4)


async def test_a_symlink_planted_as_the_next_log_is_never_followed(
    manager: TaskManager, tmp_path: Path
) -> None:
    first = await wait_end(manager, (await manager.start("exit", {"code": 0}, None, CALLER)).id)
    target = tmp_path / "precious"
    target.write_text("keep me")
    (Path(first.log_path).parent / f"{first.id + 1}.log").symlink_to(target)
    record = await manager.start("echo", {"arg": "overwrite?"}, None, CALLER)
    assert record.id == first.id + 1
    ended = await wait_end(manager, record.id)
    # The run ran; its output was dropped rather than written through the link, and the record says so.
    assert ended.state is TaskState.SUCCEEDED
    assert re.match(
        r"^output dropped: cannot write the log: \[Errno 40\] Too many levels of symbolic links",
        ended.error or "",
    )
    assert target.read_text() == "keep me"


async def test_a_run_that_writes_nothing_has_no_log_file(manager: TaskManager) -> None:
    ended = await wait_end(manager, (await manager.start("exit", {"code": 0}, None, CALLER)).id)
    assert not Path(ended.log_path).exists()
    assert manager.logs.read(ended.id, 0, 100)[0] == b""
