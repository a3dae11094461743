"""The client's result types (client/results.py, client/fields.py): read field by field, written back as sent."""

from __future__ import annotations

import json
from contextlib import closing
from datetime import datetime, timezone
from typing import Any, get_args

import pytest

from pymgr.client import (
    FINAL_STATES,
    ActionInfo,
    BadReply,
    Client,
    Event,
    Health,
    ModuleInfo,
    Progress,
    TaskRecord,
    TaskState,
    TaskTypeInfo,
)
from pymgr.tasks import states as daemon_states
from tests.conftest import Daemon
from tests.test_client import TASKS


def test_the_states_are_the_daemons() -> None:
    assert set(get_args(TaskState)) == {state.value for state in daemon_states.TaskState}
    assert FINAL_STATES == {state.value for state in daemon_states.TERMINAL}


@pytest.mark.parametrize("record", TASKS)
def test_a_record_reads_and_writes_back_the_same_json(record: dict[str, Any]) -> None:
    read = TaskRecord.from_json(record)
    assert read.to_json() == record
    assert json.dumps(read.to_json()) == json.dumps(record)  # the field order too: --json prints it
    assert read.created_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)


def test_fields_a_newer_daemon_adds_are_ignored() -> None:
    assert TaskRecord.from_json({**TASKS[0], "new_field": [1]}) == TaskRecord.from_json(TASKS[0])
    assert Health.from_json({"status": "ok", "version": "9", "pid": 1, "uptime_s": 2, "x": 1}).uptime_s == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "12"}, r"^task record: field 'id' should be an integer, not str '12'$"),
        ({"id": True}, r"^task record: field 'id' should be an integer, not bool True$"),
        ({"pid": 1.5}, r"^task record: field 'pid' should be an integer or null, not float 1\.5$"),
        (
            {"state": "paused"},
            r"^task record: field 'state' should be one of queued, running, .*, not 'paused'$",
        ),
        ({"cancel_source": "cron"}, r"^task record: field 'cancel_source' should be one of user, deadline, "),
        ({"argv": ["a", 1]}, r"^task record: field 'argv' should be a list of strings, not list"),
        ({"params": []}, r"^task record: field 'params' should be a JSON object, not list \[\]$"),
        (
            {"created_at": "2023-11-14T22:13:20"},
            r"^task record: field 'created_at' should be an ISO 8601 time with a zone, not str ",
        ),
        (
            {"created_at": None},
            r"^task record: field 'created_at' should be an ISO 8601 time with a zone, not null",
        ),
        (
            {"ended_at": 1700000000.0},
            r"^task record: field 'ended_at' should be an ISO 8601 time with a zone or null",
        ),
        ({"progress": "50"}, r"^task record: field 'progress' should be a number or null, not str '50'$"),
    ],
)
def test_a_mistyped_field_is_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(BadReply, match=message) as info:
        TaskRecord.from_json({**TASKS[0], **change})
    assert info.value.details is not None and info.value.details["field"] == next(iter(change))


def test_a_missing_field_is_named() -> None:
    record = dict(TASKS[0])
    del record["log_path"]
    with pytest.raises(BadReply, match=r"^task record: field 'log_path' is missing$"):
        TaskRecord.from_json(record)
    with pytest.raises(BadReply, match=r"^task record: expected a JSON object, got list$"):
        TaskRecord.from_json([])


def test_an_event_has_a_zoned_time_and_its_record() -> None:
    wire = {"id": 7, "kind": "state", "time": 1700000000.125, "data": TASKS[0], "event": "state"}
    event = Event.from_json(wire)
    assert event.time == datetime(2023, 11, 14, 22, 13, 20, 125000, tzinfo=timezone.utc)
    assert event.record() == TaskRecord.from_json(TASKS[0])
    assert event.to_json() == {k: v for k, v in wire.items() if k != "event"}
    marker = Event.from_json({"id": None, "kind": "heartbeat", "time": None, "data": {"time": 1.0}})
    assert (marker.id, marker.time, marker.record()) == (None, None, None)
    with pytest.raises(BadReply, match=r"^task record: field 'state' is missing$"):
        Event.from_json({**wire, "data": {}}).record()
    with pytest.raises(BadReply, match=r"^event: field 'kind' should be a string, not int 3$"):
        Event.from_json({**wire, "kind": 3})


def test_a_progress_event_has_its_progress_and_a_state_event_none() -> None:
    wire = {
        "id": 8,
        "kind": "progress",
        "time": 1.5,
        "data": {"id": 3, "progress": 40, "progress_message": None},
    }
    update = Event.from_json(wire).progress()
    assert update == Progress(id=3, progress=40.0, progress_message=None)
    assert update.to_json() == wire["data"]
    assert Event.from_json({**wire, "kind": "state", "data": TASKS[0]}).progress() is None
    assert Event.from_json(wire).record() is None
    with pytest.raises(BadReply, match=r"^progress: field 'progress' should be a number, not str '40'$"):
        Event.from_json({**wire, "data": {"id": 3, "progress": "40"}}).progress()


def test_an_action_and_a_module_keep_task_types_only_where_sent() -> None:
    typed = {"name": "start", "doc": "", "read_only": False, "dangerous": True, "params": {}, "allowed": True}
    marks = {**typed, "task_types": {"scan": True, "backup": False}}
    module = {"name": "tasks", "doc": "Tasks.", "actions": [typed, marks]}
    read = ModuleInfo.from_json(module)
    assert [a.task_types for a in read.actions] == [None, {"scan": True, "backup": False}]
    assert read.to_json() == module
    with pytest.raises(
        BadReply, match=r"^action: field 'task_types' should be an object of true/false or null"
    ):
        ActionInfo.from_json({**typed, "task_types": {"scan": "yes"}})
    with pytest.raises(BadReply, match=r"^action: field 'allowed' should be true or false, not int 1$"):
        ActionInfo.from_json({**typed, "allowed": 1})


def test_results_are_frozen() -> None:
    record = TaskRecord.from_json(TASKS[0])
    with pytest.raises(AttributeError):
        record.state = "failed"  # type: ignore[misc]


def test_every_reply_of_a_real_daemon_reads(daemon: Daemon) -> None:
    """The shapes are the daemon's, not a copy that drifted: each reply reads and writes back as sent."""
    with Client(socket=daemon.socket) as client:
        record = client.start_task("echo", {"word": "x"}, key="results")
        assert record.state in ("queued", "running") and record.created_at.tzinfo is not None
        raw = client.call("tasks", "show", id=record.id)
        assert TaskRecord.from_json(raw).to_json() == raw
        modules = client.call("tasks", "list", limit=1)
        assert isinstance(modules, list) and TaskRecord.from_json(modules[0]).id == record.id
        listing = json.loads(json.dumps([m.to_json() for m in client.modules()]))
        assert [ModuleInfo.from_json(m) for m in listing] == client.modules()
        assert all(isinstance(t, TaskTypeInfo) for t in client.task_types())
        assert client.health().pid == daemon.proc.pid
        scan = client.start_task("scan", {"task_id": 1, "duration": 0.3})
        updates = []
        with closing(client.events(task=scan.id)) as events:
            for event in events:
                updates += [event.progress()] if event.kind == "progress" else []
                if (record := event.record()) is not None and record.is_final:
                    break
        assert updates and updates[-1] == Progress(scan.id, 100.0, updates[-1].progress_message)
