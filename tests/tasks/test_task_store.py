"""The in-memory record store and the record's JSON form."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import pytest

from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TaskState
from pymgr.tasks.store import MemoryStore

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def record(type: str = "scan", key: str | None = None, state: TaskState = TaskState.QUEUED) -> TaskRecord:
    return TaskRecord(
        id=0,
        type=type,
        key=key,
        params={},
        argv=["x"],
        state=state,
        started_by={"transport": "internal"},
        created_at=T0,
        log_path="/l",
        marker="0123456789abcdef",
    )


def end(store: MemoryStore, r: TaskRecord) -> TaskRecord:
    r = dataclasses.replace(r, state=TaskState.SUCCEEDED)
    store.update(r)
    return r


def test_ids_increase_from_first_id() -> None:
    store = MemoryStore(10, first_id=41)
    assert [store.add(record()).id for _ in range(3)] == [41, 42, 43]


def test_list_is_newest_first_and_filters() -> None:
    store = MemoryStore(10)
    a = store.add(record("scan", "scan:1"))
    b = store.add(record("backup"))
    c = end(store, store.add(record("scan", "scan:2")))
    assert [r.id for r in store.list()] == [c.id, b.id, a.id]
    assert [r.id for r in store.list(type="scan")] == [c.id, a.id]
    assert [r.id for r in store.list(state=TaskState.SUCCEEDED)] == [c.id]
    assert [r.id for r in store.list(key="scan:1")] == [a.id]
    assert store.list(type="scan", state=TaskState.QUEUED, key="scan:2") == []


def test_find_active_follows_the_state() -> None:
    store = MemoryStore(10)
    a = store.add(record(key="k"))
    assert store.find_active("k") == a
    running = dataclasses.replace(a, state=TaskState.RUNNING)
    store.update(running)
    assert store.find_active("k") == running
    end(store, running)
    assert store.find_active("k") is None
    b = store.add(record(key="k"))
    assert store.find_active("k") == b
    assert store.find_active("other") is None


def test_update_of_unknown_id_raises() -> None:
    with pytest.raises(KeyError, match=r"no task record 5 to update"):
        MemoryStore(10).update(dataclasses.replace(record(), id=5))


def test_max_records_at_the_limit_keeps_all() -> None:
    store = MemoryStore(3)
    ids = [end(store, store.add(record())).id for _ in range(3)]
    assert [r.id for r in store.list()] == ids[::-1]


def test_max_records_past_the_limit_drops_oldest_ended() -> None:
    store = MemoryStore(3)
    active = store.add(record(key="k"))
    ended = [end(store, store.add(record())).id for _ in range(3)]
    # 4 records > 3: the oldest *ended* one goes, the older active one stays.
    assert [r.id for r in store.list()] == [ended[2], ended[1], active.id]
    assert store.get(ended[0]) is None
    assert store.find_active("k") == active


def test_active_records_are_never_dropped() -> None:
    store = MemoryStore(2)
    actives = [store.add(record()).id for _ in range(4)]
    assert len(store) == 4
    assert sorted(r.id for r in store.list()) == actives


def test_max_records_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^max_records must be >= 1, not 0$"):
        MemoryStore(0)


def test_to_dict_is_json_ready_with_iso_utc_times() -> None:
    r = dataclasses.replace(
        record(key="scan:1"),
        id=7,
        state=TaskState.STOPPED,
        pid=99,
        pid_start_time=12345,
        exit_code=None,
        signal="SIGTERM",
        started_at=T0 + timedelta(seconds=1),
        ended_at=T0 + timedelta(seconds=2),
        cancel_source="user",
        stopped_by={"transport": "unix", "uid": 0},
    )
    data = json.loads(json.dumps(r.to_dict()))
    assert data == {
        "id": 7,
        "type": "scan",
        "key": "scan:1",
        "params": {},
        "argv": ["x"],
        "state": "stopped",
        "pid": 99,
        "pid_start_time": 12345,
        "exit_code": None,
        "signal": "SIGTERM",
        "created_at": "2024-05-01T12:00:00.123+00:00",
        "started_at": "2024-05-01T12:00:01.123+00:00",
        "ended_at": "2024-05-01T12:00:02.123+00:00",
        "started_by": {"transport": "internal"},
        "stopped_by": {"transport": "unix", "uid": 0},
        "cancel_source": "user",
        "error": None,
        "log_path": "/l",
        "marker": "0123456789abcdef",
    }
    assert datetime.fromisoformat(data["created_at"]) == T0.replace(microsecond=123000)
