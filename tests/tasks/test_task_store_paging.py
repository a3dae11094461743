"""The store's pages of records: ``limit``, the ``before`` cursor, the indexes behind each filter."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from bench import task_history
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TaskState
from pymgr.tasks.store import SCHEMA_VERSION, SqliteStore
from pymgr.tasks.store.schema import STARTER_SQL
from pymgr.tasks.store.sqlite import COUNT_BY_STATE_SQL
from tests.tasks.test_task_store import end, make, record


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    store = make(tmp_path, max_records=100)
    for n in range(10):
        added = store.add(record("scan" if n % 2 else "backup", key=f"k{n % 3}"))
        if n < 8:
            end(store, added)
    return store


def ids(records: list[TaskRecord]) -> list[int]:
    return [r.id for r in records]


def test_a_page_holds_at_most_limit_records_newest_first(store: SqliteStore) -> None:
    assert ids(store.list_runs(limit=1)) == [10]
    assert ids(store.list_runs(limit=3)) == [10, 9, 8]
    assert ids(store.list_runs(limit=10)) == list(range(10, 0, -1))
    assert ids(store.list_runs(limit=11)) == ids(store.list_runs()) == list(range(10, 0, -1))


def test_before_is_the_cursor_of_the_next_page(store: SqliteStore) -> None:
    pages, before = [], None
    while page := store.list_runs(limit=4, before=before):
        pages.append(ids(page))
        before = page[-1].id
    assert pages == [[10, 9, 8, 7], [6, 5, 4, 3], [2, 1]]
    assert store.list_runs(before=1) == []
    assert ids(store.list_runs(before=2**63 - 1, limit=1)) == [10]


def test_a_new_run_does_not_shift_the_next_page(store: SqliteStore) -> None:
    first = store.list_runs(limit=4)
    store.add(record())
    assert ids(store.list_runs(limit=4, before=first[-1].id)) == [6, 5, 4, 3]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"type": "scan"}, [10, 8, 6, 4, 2]),
        ({"key": "k0"}, [10, 7, 4, 1]),
        ({"state": TaskState.QUEUED}, [10, 9]),
        ({"state": TaskState.SUCCEEDED, "type": "scan", "key": "k1"}, [8, 2]),
    ],
)
def test_filters_page_too(store: SqliteStore, filters: dict[str, Any], expected: list[int]) -> None:
    assert ids(store.list_runs(**filters)) == expected
    assert ids(store.list_runs(limit=1, **filters)) == expected[:1]
    assert ids(store.list_runs(limit=2, before=expected[0], **filters)) == expected[1:3]


@pytest.mark.parametrize(
    ("column", "value", "index"),
    [("state", "succeeded", "runs_state"), ("type", "scan", "runs_type"), ("key", "k1", "runs_key")],
)
def test_each_filter_walks_its_index_in_id_order(
    store: SqliteStore, column: str, value: str, index: str
) -> None:
    query = f"EXPLAIN QUERY PLAN SELECT * FROM runs WHERE {column} = ? AND id < ? ORDER BY id DESC LIMIT ?"
    found = " | ".join(row[3] for row in store._db.execute(query, (value, 5, 3)))
    assert f"USING INDEX {index} (" in found and "TEMP B-TREE" not in found, found


def test_the_counts_by_state_are_one_group_by_over_the_state_index(store: SqliteStore) -> None:
    assert store.count_by_state() == {TaskState.QUEUED: 2, TaskState.SUCCEEDED: 8}
    plan = " | ".join(row[3] for row in store._db.execute(f"EXPLAIN QUERY PLAN {COUNT_BY_STATE_SQL}"))
    assert "USING COVERING INDEX runs_state" in plan and "TEMP B-TREE" not in plan, plan


def test_counting_a_full_history_stays_cheap(tmp_path: Path) -> None:
    """Not a benchmark (docs/performance.md has those): a bound far above what it takes, so that a
    count that came to read every row, or a row at a time, fails here."""
    task_history.seed(tmp_path, 10_000)  # [tasks] max_records's default, shaped like a busy host's
    store = make(tmp_path, max_records=10_000)
    assert store.count_by_state() == {
        TaskState.SUCCEEDED: 8500,
        TaskState.FAILED: 1000,
        TaskState.STOPPED: 500,
    }
    took = []
    for _ in range(5):
        started = time.perf_counter()
        store.count_by_state()
        took.append(time.perf_counter() - started)
    assert min(took) < 0.05, took  # about 1 ms on a quiet machine


def test_a_schema_2_store_gets_the_indexes(tmp_path: Path) -> None:
    store = make(tmp_path)
    kept = store.add(record(key="k"))
    store.close()
    db = sqlite3.connect(tmp_path / "tasks.db")
    for name in ("runs_state", "runs_type", "runs_key", "runs_started_by"):
        db.execute(f"DROP INDEX {name}")
    db.execute("CREATE INDEX runs_active ON runs(state) WHERE state IN ('queued', 'running')")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    store = make(tmp_path)
    indexes = {row[0] for row in store._db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {
        "runs_state",
        "runs_type",
        "runs_key",
        "runs_started_by",
    } <= indexes and "runs_active" not in indexes
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.list_runs(key="k") == [kept] and store.active() == [kept]
    store.close()


def test_started_by_is_the_person_a_delegate_called_for_else_the_user(tmp_path: Path) -> None:
    store = make(tmp_path, max_records=100)
    alice = {"transport": "unix", "user": "www-data", "person": "console:alice"}
    root = {"transport": "unix", "user": "root", "person": None}
    added = [store.add(dataclasses.replace(record(), started_by=who)) for who in (alice, root, alice)]
    assert ids(store.list_runs(started_by="console:alice")) == [added[2].id, added[0].id]
    assert ids(store.list_runs(started_by="root")) == [added[1].id]
    assert store.list_runs(started_by="www-data") == []  # the delegate did not start them: alice did
    assert ids(store.list_runs(started_by="console:alice", before=added[2].id)) == [added[0].id]
    query = (
        f"EXPLAIN QUERY PLAN SELECT * FROM runs WHERE {STARTER_SQL} = ? AND id < ? ORDER BY id DESC LIMIT ?"
    )
    found = " | ".join(row[3] for row in store._db.execute(query, ("root", 5, 3)))
    assert "USING INDEX runs_started_by (" in found and "TEMP B-TREE" not in found, found


def test_a_schema_3_store_gets_the_started_by_index(tmp_path: Path) -> None:
    store = make(tmp_path)
    kept = store.add(dataclasses.replace(record(), started_by={"transport": "unix", "user": "root"}))
    store.close()
    db = sqlite3.connect(tmp_path / "tasks.db")
    db.execute("DROP INDEX runs_started_by")
    db.execute("PRAGMA user_version=3")
    db.commit()
    db.close()
    store = make(tmp_path)
    indexes = {row[0] for row in store._db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "runs_started_by" in indexes
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.list_runs(started_by="root") == [kept]
    store.close()
