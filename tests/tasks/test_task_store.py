"""The SQLite record store (a real file in tmp_path) and the record's JSON form."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pymgr.errors import PymgrInternalError, Unavailable
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TaskState
from pymgr.tasks.store import SCHEMA_VERSION, SqliteStore

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def record(type: str = "scan", key: str | None = None, state: TaskState = TaskState.QUEUED) -> TaskRecord:
    return TaskRecord(
        id=0,
        type=type,
        key=key,
        params={"n": 1, "s": "é"},
        argv=["x", "a b"],
        state=state,
        started_by={"transport": "internal"},
        created_at=T0,
        log_path="/l",
        marker="0123456789abcdef",
    )


def end(store: SqliteStore, r: TaskRecord, ended_at: datetime = T0) -> TaskRecord:
    r = dataclasses.replace(r, state=TaskState.SUCCEEDED, ended_at=ended_at)
    store.update(r)
    return r


def make(tmp_path: Path, max_records: int = 10, **kwargs: object) -> SqliteStore:
    return SqliteStore(tmp_path / "tasks.db", max_records=max_records, **kwargs)  # type: ignore[arg-type]


def test_ids_increase_from_first_id_and_are_never_reused(tmp_path: Path) -> None:
    store = make(tmp_path, max_records=1, first_id=41)
    ids = [end(store, store.add(record())).id for _ in range(3)]
    assert ids == [41, 42, 43]
    store.prune(T0)
    assert [r.id for r in store.list_runs()] == [43]
    store.close()
    store = make(tmp_path, first_id=1)  # first_id only seeds a new file
    assert store.add(record()).id == 44


def test_records_round_trip_every_field(tmp_path: Path) -> None:
    store = make(tmp_path)
    full = dataclasses.replace(
        store.add(dataclasses.replace(record(key="k"), attempt=3, retry_of=7)),
        state=TaskState.RUNNING,
        pid=99,
        pid_start_time=12345,
        started_at=T0 + timedelta(seconds=1),
        cancel_source="user",
        stopped_by={"transport": "unix", "uid": 0},
        not_before=T0 + timedelta(seconds=5),
        boot_id="b-1",
        progress=42.5,
        progress_message="half",
        error="e",
    )
    store.update(full)
    store.update(
        dataclasses.replace(full, params={"changed": True}, attempt=9)
    )  # fixed at add: not rewritten
    store.close()
    assert make(tmp_path).get(full.id) == full


def _every_field_set(n: int) -> TaskRecord:
    """A record where every field holds a value of its own (none is None), varied by ``n``."""
    return TaskRecord(
        id=0,
        type=f"t{n}",
        key=f"k{n}",
        params={"n": n, "s": "é\u2028"},
        argv=[f"/bin/{n}", "a b"],
        state=TaskState.FAILED,
        started_by={"uid": n},
        created_at=T0 + timedelta(seconds=n),
        log_path=f"/l{n}",
        marker=f"m{n}",
        pid=100 + n,
        pid_start_time=200 + n,
        exit_code=n,
        signal=f"SIG{n}",
        started_at=T0 + timedelta(seconds=n + 1),
        ended_at=T0 + timedelta(seconds=n + 2),
        cancel_source="deadline",
        stopped_by={"uid": n + 1},
        error=f"e{n}",
        attempt=n + 1,
        retry_of=n + 2,
        not_before=T0 + timedelta(seconds=n + 3),
        boot_id=f"b{n}",
        progress=n + 0.5,
        progress_message=f"p{n}",
    )


def test_every_field_goes_to_its_own_column_on_add_and_on_update(tmp_path: Path) -> None:
    # The rows are written out field by field (for speed): a field in the wrong place shows here.
    store = make(tmp_path)
    added = store.add(_every_field_set(1))
    assert added == dataclasses.replace(_every_field_set(1), id=added.id)
    assert store.get(added.id) == added
    changed = dataclasses.replace(_every_field_set(2), id=added.id)
    store.update(changed)
    fixed = {
        "id",
        "type",
        "key",
        "params",
        "argv",
        "started_by",
        "created_at",
        "marker",
        "attempt",
        "retry_of",
    }
    expected = dataclasses.replace(changed, **{name: getattr(added, name) for name in fixed})
    store.close()
    assert make(tmp_path).get(added.id) == expected


def test_list_is_newest_first_and_filters(tmp_path: Path) -> None:
    store = make(tmp_path)
    a = store.add(record("scan", "scan:1"))
    b = store.add(record("backup"))
    c = end(store, store.add(record("scan", "scan:2")))
    assert [r.id for r in store.list_runs()] == [c.id, b.id, a.id]
    assert [r.id for r in store.list_runs(type="scan")] == [c.id, a.id]
    assert [r.id for r in store.list_runs(state=TaskState.SUCCEEDED)] == [c.id]
    assert [r.id for r in store.list_runs(key="scan:1")] == [a.id]
    assert store.list_runs(type="scan", state=TaskState.QUEUED, key="scan:2") == []
    assert [r.id for r in store.active()] == [a.id, b.id]


def test_find_active_follows_the_state(tmp_path: Path) -> None:
    store = make(tmp_path)
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


def test_a_second_active_record_with_a_key_is_refused_by_the_index(tmp_path: Path) -> None:
    store = make(tmp_path)
    store.add(record(key="k"))
    with pytest.raises(
        PymgrInternalError, match=r"^task store .*tasks\.db: add a record: UNIQUE constraint failed"
    ):
        store.add(record(key="k"))
    assert len(store.list_runs()) == 1


def test_update_of_unknown_id_raises(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"no task record 5 to update"):
        make(tmp_path).update(dataclasses.replace(record(), id=5))


def test_batch_is_one_transaction_and_rolls_back_on_error(tmp_path: Path) -> None:
    store = make(tmp_path)
    with pytest.raises(RuntimeError), store.batch():
        store.add(record())
        store.add(record())
        raise RuntimeError("boom")
    assert store.list_runs() == [] and len(store) == 0
    with store.batch():
        first = store.add(record())
        store.update(dataclasses.replace(first, log_path="/logs/1.log"))
    assert store.get(first.id).log_path == "/logs/1.log"  # type: ignore[union-attr]


def test_a_lazy_batch_begins_at_its_first_write_only(tmp_path: Path) -> None:
    store = make(tmp_path)
    other = sqlite3.connect(tmp_path / "tasks.db", timeout=0)
    with store.batch(lazy=True):
        assert not store._db.in_transaction  # nothing written yet: no write lock either
        other.execute("BEGIN IMMEDIATE")  # so another writer still can
        other.execute("ROLLBACK")
        assert store.get(1) is None
    with store.batch(lazy=True):
        first = store.add(record())
        assert store._db.in_transaction
        store.update(dataclasses.replace(first, log_path="/logs/1.log"))
    assert not store._db.in_transaction
    assert store.get(first.id).log_path == "/logs/1.log"  # type: ignore[union-attr]
    with pytest.raises(RuntimeError), store.batch(lazy=True):
        store.add(record())
        raise RuntimeError("boom")
    assert len(store.list_runs()) == 1 and len(store) == 1
    other.close()


def test_max_records_at_the_limit_keeps_all(tmp_path: Path) -> None:
    store = make(tmp_path, max_records=3)
    ids = [end(store, store.add(record())).id for _ in range(3)]
    assert store.prune(T0) == []
    assert [r.id for r in store.list_runs()] == ids[::-1]


def test_max_records_past_the_limit_drops_oldest_ended(tmp_path: Path) -> None:
    store = make(tmp_path, max_records=3)
    active = store.add(record(key="k"))
    ended = [end(store, store.add(record())).id for _ in range(3)]
    # 4 records > 3: the oldest *ended* one goes, the older active one stays.
    assert [r.id for r in store.prune(T0)] == [ended[0]]
    assert [r.id for r in store.list_runs()] == [ended[2], ended[1], active.id]
    assert store.find_active("k") == active


def test_active_records_are_never_dropped(tmp_path: Path) -> None:
    store = make(tmp_path, max_records=2)
    actives = [store.add(record()).id for _ in range(4)]
    assert store.prune(T0 + timedelta(days=999)) == []
    assert sorted(r.id for r in store.list_runs()) == actives


def test_max_age_both_sides(tmp_path: Path) -> None:
    store = make(tmp_path, max_age_s=3600)
    old = end(store, store.add(record()), ended_at=T0)
    young = end(store, store.add(record()), ended_at=T0 + timedelta(seconds=1))
    running = store.add(record(state=TaskState.RUNNING))
    assert store.prune(T0 + timedelta(seconds=3600)) == []  # exactly max_age old: kept
    assert [r.id for r in store.prune(T0 + timedelta(seconds=3600.5))] == [old.id]
    assert store.prune(T0 + timedelta(days=9), by_age=False) == []
    assert [r.id for r in store.list_runs()] == [running.id, young.id]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_records": 0}, r"^max_records must be >= 1, not 0$"),
        ({"max_age_s": 0}, r"^max_age_s must be > 0 or None, not 0$"),
    ],
)
def test_limits_are_checked(tmp_path: Path, kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SqliteStore(tmp_path / "x.db", **{"max_records": 1, **kwargs})  # type: ignore[arg-type]


def test_set_progress_in_one_batch(tmp_path: Path) -> None:
    store = make(tmp_path)
    a, b = store.add(record()), store.add(record())
    store.set_progress({a.id: (10.0, "ten"), b.id: (99.5, None)})
    assert (store.get(a.id).progress, store.get(a.id).progress_message) == (10.0, "ten")  # type: ignore[union-attr]
    assert (store.get(b.id).progress, store.get(b.id).progress_message) == (99.5, None)  # type: ignore[union-attr]


def test_file_is_wal_with_the_schema_version(tmp_path: Path) -> None:
    make(tmp_path).close()
    db = sqlite3.connect(tmp_path / "tasks.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert make(tmp_path).integrity_check() == "ok"


def test_checkpoints_run_off_the_writing_connection(tmp_path: Path) -> None:
    store = make(tmp_path)
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # never inside a commit
    ids = [store.add(record()).id for _ in range(20)]
    thread = threading.Thread(target=store.checkpoint_passive)
    thread.start()
    thread.join(10)
    # The main file alone (immutable=1 ignores the WAL) now holds every committed record.
    main_file = sqlite3.connect(f"{(tmp_path / 'tasks.db').as_uri()}?immutable=1", uri=True)
    try:
        assert [row[0] for row in main_file.execute("SELECT id FROM runs ORDER BY id")] == ids
    finally:
        main_file.close()
    store.close()


def test_the_checkpoint_starts_the_wal_over_so_the_next_commit_need_not(tmp_path: Path) -> None:
    store = make(tmp_path)
    for _ in range(5):
        store.add(record())
    store.checkpoint_passive()  # the daemon runs it in a worker thread
    wal = tmp_path / "tasks.db-wal"
    salts = wal.read_bytes()[16:24]  # WAL header salts: new ones each time the WAL starts over
    later = store.add(record())
    assert (
        wal.read_bytes()[16:24] == salts
    )  # the commit appended; the header (and its fsync) was the worker's
    assert (
        store.get(later.id) == later
        and store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    )
    store.checkpoint_passive()  # the daemon wrote since: the WAL starts over again, here
    salts = wal.read_bytes()[16:24]
    for _ in range(3):  # idle: nothing is written, however often the checkpoint runs
        store.checkpoint_passive()
        assert wal.read_bytes()[16:24] == salts
    store.close()


def test_a_failed_wal_restart_leaves_no_transaction_open(tmp_path: Path) -> None:
    store = make(tmp_path)
    store.add(record())
    store.checkpoint_passive()  # opens the worker's connection
    checkpointer = store._checkpointer
    assert checkpointer is not None
    store.add(record())
    checkpointer.execute("PRAGMA query_only=1")  # its next write fails, as a full disk would
    with pytest.raises(sqlite3.Error):
        store.checkpoint_passive()
    assert not checkpointer.in_transaction  # rolled back: the daemon's writes are not locked out
    store.add(record())
    store.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "tasks.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(
        Unavailable,
        match=rf"^task store {tmp_path}/tasks\.db has schema version {SCHEMA_VERSION + 1}, newer than",
    ):
        make(tmp_path)


def test_a_killed_writer_leaves_every_commit_and_a_sound_file(tmp_path: Path) -> None:
    """Commits survive SIGKILL of the writing process (WAL, synchronous=NORMAL)."""
    script = (
        "import sys, dataclasses; sys.path[:0] = [sys.argv[2]]\n"
        "from test_task_store import record\n"
        "from pymgr.tasks.store import SqliteStore\n"
        "s = SqliteStore(__import__('pathlib').Path(sys.argv[1]), max_records=100000)\n"
        "while True:\n"
        "    r = s.add(record())\n"
        "    print(r.id, flush=True)\n"
    )
    proc = subprocess.Popen(
        [os.sys.executable, "-c", script, str(tmp_path / "tasks.db"), str(Path(__file__).parent)],  # type: ignore[attr-defined]
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    with proc.stdout:
        acknowledged = [int(proc.stdout.readline()) for _ in range(300)]
        proc.kill()
        proc.wait()
    store = make(tmp_path, max_records=100000)
    assert store.integrity_check() == "ok"
    ids = {r.id for r in store.list_runs()}
    assert set(acknowledged) <= ids


# -- a state directory that refuses writes ---------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only): it can be filled up and remounted read-only."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a real full or read-only file system)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_read_only_state_dir_is_unavailable_and_reads_still_work(small_fs: Path) -> None:
    store = SqliteStore(small_fs / "tasks.db", max_records=100)
    kept = end(store, store.add(record()))
    store.close()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    store = SqliteStore(small_fs / "tasks.db", max_records=100)
    message = (
        rf"^task store {small_fs}/tasks\.db is read-only; errno 30 \(EROFS\): Read-only file system; "
        r"no task can start or change until it is writable$"
    )
    assert store.read_only is not None and re.match(message, store.read_only)
    with pytest.raises(Unavailable, match=message):
        store.add(record())
    with pytest.raises(Unavailable, match=message):
        store.update(kept)
    assert store.prune(T0) == []  # nothing to drop: nothing to write either
    assert store.list_runs() == [kept] and store.get(kept.id) == kept
    store.close()
    subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    store = SqliteStore(small_fs / "tasks.db", max_records=100)
    assert store.read_only is None and store.integrity_check() == "ok"
    assert store.add(record()).id == kept.id + 1


def test_read_only_state_dir_without_a_store_serves_an_empty_one(small_fs: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    store = SqliteStore(small_fs / "tasks.db", max_records=100)
    assert store.read_only is not None and store.list_runs() == []
    with pytest.raises(Unavailable, match=r"^task store .* is read-only; errno 30 \(EROFS\)"):
        store.add(record())


def test_full_state_dir_is_unavailable_and_nothing_is_lost(small_fs: Path) -> None:
    store = SqliteStore(small_fs / "tasks.db", max_records=100000)
    added = []
    big = dataclasses.replace(record(), params={"blob": "x" * 20000})
    with pytest.raises(
        Unavailable, match=rf"^task store {small_fs}/tasks\.db: cannot .*\(SQLITE_FULL\).*errno 28 \(ENOSPC\)"
    ):
        for _ in range(200):
            added.append(store.add(big).id)
    (small_fs / "tasks.db-wal").stat()  # still there
    assert [r.id for r in store.list_runs()] == added[::-1]
    store.close()
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_fs)], check=True)
    again = SqliteStore(small_fs / "tasks.db", max_records=100000)
    assert again.integrity_check() == "ok"
    assert [r.id for r in again.list_runs()] == added[::-1]


def test_a_batch_that_cannot_commit_is_gone_whole(small_fs: Path) -> None:
    store = SqliteStore(small_fs / "tasks.db", max_records=100000)
    big = dataclasses.replace(record(), params={"blob": "x" * 20000})
    committed: list[int] = []
    for _ in range(100):
        staged = []
        try:
            with store.batch():
                for _ in range(5):
                    staged.append(store.add(big).id)
        except Unavailable as exc:
            failure = exc
            break
        committed += staged
    else:
        pytest.fail("the file system never filled up")
    assert re.match(
        rf"^task store {small_fs}/tasks\.db: cannot write: .*\(SQLITE_FULL\).*errno 28", str(failure)
    )
    assert [r.id for r in store.list_runs()] == committed[::-1]
    assert len(store) == len(committed)
    store.close()
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_fs)], check=True)
    again = SqliteStore(small_fs / "tasks.db", max_records=100000)
    assert again.integrity_check() == "ok"
    assert [r.id for r in again.list_runs()] == committed[::-1]


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
        boot_id="b",
        progress=50.0,
        progress_message="half",
    )
    data = json.loads(json.dumps(r.to_dict()))
    assert data == {
        "id": 7,
        "type": "scan",
        "key": "scan:1",
        "params": {"n": 1, "s": "é"},
        "argv": ["x", "a b"],
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
        "attempt": 1,
        "retry_of": None,
        "not_before": None,
        "progress": 50.0,
        "progress_message": "half",
        "boot_id": "b",
        "cgroup": None,
        "log_path": "/l",
    }  # no marker: whoever knows it can make a process look like the run's
    assert datetime.fromisoformat(data["created_at"]) == T0.replace(microsecond=123000)


async def test_a_manager_on_a_read_only_state_dir_serves_reads_and_refuses_starts(small_fs: Path) -> None:
    from taskhelpers import CALLER, tasks_config

    from pymgr.tasks.manager import TaskManager

    store = SqliteStore(small_fs / "tasks.db", max_records=100)
    kept = end(store, store.add(record()))
    store.close()
    (small_fs / "logs").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    manager = TaskManager(tasks_config(), small_fs)
    message = rf"^task store {small_fs}/tasks\.db is read-only; errno 30 \(EROFS\): Read-only file system; no task can"
    with pytest.raises(Unavailable, match=message):
        await manager.open()
    with pytest.raises(Unavailable, match=message):
        await manager.start("exit", {"code": 0}, None, CALLER)
    assert [r.id for r in manager.list_runs()] == [kept.id] and manager.get(
        kept.id
    ).state is TaskState.SUCCEEDED
    await manager.aclose()
