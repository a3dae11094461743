"""Where task records live: the ``TaskStore`` interface and its SQLite version.

Rules:
- The manager talks to ``TaskStore`` only; ``SqliteStore`` is the one the
  daemon uses, a file under the state directory (``<state_dir>/tasks.db``).
- Ids are SQLite's ``INTEGER PRIMARY KEY AUTOINCREMENT``: increasing and never
  reused, not even after the newest rows were deleted.
- At most one active (queued or running) record per key, enforced by a
  partial unique index; ``find_active`` answers from that index.
- ``list`` pages newest first: ``before`` (an id) is the cursor, so a page
  never shifts when runs start (new ids are higher) or old ones are pruned;
  each filter (state, type, key) has an index that walks it in id order.
- Retention: at most ``max_records`` rows, and (when ``max_age_s`` is set)
  no ended row older than that. Only *ended* rows are ever dropped, oldest
  first, so while more than ``max_records`` runs are active the store holds
  more. ``prune`` returns what it dropped, so the caller deletes their logs.
- ``update`` writes only what changes in a run's life (state, pid, times,
  outcome, progress); what is fixed at ``add`` (type, key, params, argv,
  who started it, attempt) is never rewritten.
- Every write is one ``BEGIN IMMEDIATE`` transaction (``batch()`` groups
  several into one; ``batch(lazy=True)`` begins only at its first write,
  so a block that writes nothing takes no lock and commits nothing).
  WAL mode with ``synchronous=NORMAL``: a commit is in the WAL file when
  ``commit()`` returns, so it survives the daemon being killed
  (``kill -9``) at any point; only a power loss or kernel crash can take
  back the last commits, never corrupt the file. ``busy_timeout`` lets a
  second reader (``sqlite3`` on the command line) wait instead of failing.
- Group commit: ``group()`` blocks write into one transaction that stays
  open after the block, until ``commit_group()``; the task starts of one
  event-loop turn share one commit (one WAL append instead of one per
  start). Each block that joins an open group is a savepoint: a failure
  undoes that block only (the block that began the group is all of it so
  far, and undoes it all). Any other write or read commits the open group
  first, so no write ever shares the group's commit and nothing reads its
  rows uncommitted; if that commit fails, the failure is the group's (its
  ``on_done`` callbacks hear it: every row of the group is gone) and the
  write or read goes on in a transaction of its own.
- No checkpoint runs inside a commit (``wal_autocheckpoint=0``): the
  daemon runs ``checkpoint_passive`` in a worker thread every few seconds,
  so the fsync a checkpoint needs never stalls the event loop; nor does the
  fsync of the new WAL header after it (the worker's connection starts the
  WAL over itself).
- A write that fails (read-only or full disk, I/O error) raises
  ``Unavailable`` naming the file, SQLite's error and the OS errno, and
  changes nothing: the transaction is rolled back. Reads keep working.
- The schema's version is ``PRAGMA user_version``; a newer one than this
  code knows is refused at open, never silently used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from pymgr.errors import PymgrError, PymgrInternalError, Unavailable
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import ACTIVE, TERMINAL, TaskState

#: The schema this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = 3

_ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE))
_TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL))

#: One index per ``list`` filter: each holds the rowid (the id) after its column, so a filtered page
#: newest first is a seek and a walk backwards, whatever the history's size (``runs(state)`` also
#: serves ``active``, as the partial index of schema 2 did).
_LIST_INDEXES = (
    "CREATE INDEX runs_state ON runs(state)",
    "CREATE INDEX runs_type ON runs(type)",
    "CREATE INDEX runs_key ON runs(key) WHERE key IS NOT NULL",
)

#: What brings a store of an older schema to this one, by the version it starts from.
_UPGRADES = {
    1: ("ALTER TABLE runs ADD COLUMN cgroup TEXT", "DROP INDEX IF EXISTS runs_active", *_LIST_INDEXES),
    2: ("DROP INDEX IF EXISTS runs_active", *_LIST_INDEXES),
}
#: The largest id a run can have: SQLite's INTEGER is a signed 64-bit number.
_MAX_ID = 2**63 - 1

#: Seconds a write waits for another connection's lock before failing; the
#: daemon is the only writer, so this only covers an operator's sqlite3 shell.
DEFAULT_BUSY_TIMEOUT_S = 5.0

_SCHEMA = f"""
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    key TEXT,
    params TEXT NOT NULL,
    argv TEXT NOT NULL,
    state TEXT NOT NULL,
    started_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    log_path TEXT NOT NULL,
    marker TEXT NOT NULL,
    pid INTEGER,
    pid_start_time INTEGER,
    exit_code INTEGER,
    signal TEXT,
    started_at REAL,
    ended_at REAL,
    cancel_source TEXT,
    stopped_by TEXT,
    error TEXT,
    attempt INTEGER NOT NULL,
    retry_of INTEGER,
    not_before REAL,
    boot_id TEXT,
    progress REAL,
    progress_message TEXT,
    cgroup TEXT
);
CREATE UNIQUE INDEX runs_active_key ON runs(key) WHERE key IS NOT NULL AND state IN ({_ACTIVE_SQL});
CREATE INDEX runs_ended_at ON runs(ended_at) WHERE ended_at IS NOT NULL;
""" + ";\n".join(_LIST_INDEXES)

#: Columns in TaskRecord field order (the table's order too).
_COLUMNS = tuple(field.name for field in dataclasses.fields(TaskRecord))
_JSON_COLUMNS = frozenset({"params", "argv", "started_by", "stopped_by"})
_TIME_COLUMNS = frozenset({"created_at", "started_at", "ended_at", "not_before"})
#: Columns fixed when a run is created: ``update`` never rewrites them
#: (re-encoding params, argv and the caller on every transition was half its cost).
_FIXED_COLUMNS = frozenset({"id", "type", "key", "params", "argv", "started_by", "created_at", "marker", "attempt", "retry_of"})
_CHANGING_COLUMNS = tuple(name for name in _COLUMNS if name not in _FIXED_COLUMNS)
_UPDATE_SQL = f"UPDATE runs SET {', '.join(f'{name} = ?' for name in _CHANGING_COLUMNS)} WHERE id = ?"
_INSERT_SQL = f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
#: AUTOINCREMENT's high-water mark (sqlite_sequence) and the highest id: the next id is past both.
_NEXT_ID_SQL = "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'runs'), (SELECT max(id) FROM runs)"


#: Told how a group's commit went: None (committed) or the error (nothing of the group is stored).
GroupCallback = Callable[[PymgrError | None], None]


class TaskStore(Protocol):
    """What the task manager needs from a record store."""

    def add(self, record: TaskRecord) -> TaskRecord:
        """Store a new record under the next id ("{id}" in its log_path becomes it); returns it with that id."""
        ...

    def update(self, record: TaskRecord) -> None:
        """Replace the stored record that has ``record.id``."""
        ...

    def get(self, task_id: int) -> TaskRecord | None:
        """The record with this id, or None."""
        ...

    def list(
        self,
        state: TaskState | None = None,
        type: str | None = None,
        key: str | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> list[TaskRecord]:
        """Records matching every filter given, newest first: at most ``limit``, with ids below ``before``."""
        ...

    def find_active(self, key: str) -> TaskRecord | None:
        """The queued or running record with this key, or None."""
        ...

    def active(self) -> list[TaskRecord]:
        """Every queued or running record, oldest first."""
        ...

    def set_progress(self, progress: Mapping[int, tuple[float, str | None]]) -> None:
        """Record the latest progress of several runs at once."""
        ...

    def prune(self, now: datetime, by_age: bool = True) -> list[TaskRecord]:
        """Drop ended records past the retention limits; returns the dropped ones."""
        ...

    def batch(self, lazy: bool = False) -> contextlib.AbstractContextManager[None]:
        """Group the writes inside into one transaction (``lazy``: begun by the first write, if any)."""
        ...

    def group(self, on_done: GroupCallback | None = None) -> contextlib.AbstractContextManager[None]:
        """Write inside the open group transaction, committed later by ``commit_group``."""
        ...

    def commit_group(self) -> None:
        """Commit the open group, if any (its callbacks hear the outcome)."""
        ...

    @property
    def group_open(self) -> bool:
        """A group transaction is open (staged writes wait for ``commit_group``)."""
        ...

    def checkpoint(self) -> None:
        """Make everything written so far durable in the main file (clean shutdown)."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...


#: Compact JSON for the JSON columns (one encoder: ``json.dumps`` with options builds one per call).
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _json(value: Any) -> str | None:
    return None if value is None else _encode_json(value)


def _time(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _insert_row(r: TaskRecord) -> tuple[Any, ...]:
    """The row of ``_INSERT_SQL``, written out field by field: a loop over the columns with
    per-column checks cost 20 µs a record, on every start."""
    return (
        r.id, r.type, r.key, _encode_json(r.params), _encode_json(r.argv), r.state.value, _encode_json(r.started_by),
        r.created_at.timestamp(), r.log_path, r.marker, r.pid, r.pid_start_time, r.exit_code, r.signal,
        _time(r.started_at), _time(r.ended_at), r.cancel_source, _json(r.stopped_by), r.error, r.attempt, r.retry_of,
        _time(r.not_before), r.boot_id, r.progress, r.progress_message, r.cgroup,
    )  # fmt: skip


def _update_row(r: TaskRecord) -> tuple[Any, ...]:
    """The parameters of ``_UPDATE_SQL``: the changing columns, then the id."""
    return (
        r.state.value, r.log_path, r.pid, r.pid_start_time, r.exit_code, r.signal, _time(r.started_at),
        _time(r.ended_at), r.cancel_source, _json(r.stopped_by), r.error, _time(r.not_before), r.boot_id, r.progress,
        r.progress_message, r.cgroup, r.id,
    )  # fmt: skip


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


def _decoder(name: str) -> Callable[[Any], Any] | None:
    """How column ``name`` of a row becomes its TaskRecord field (None: as SQLite gives it)."""
    if name in _JSON_COLUMNS:
        return json.JSONDecoder().decode
    if name in _TIME_COLUMNS:
        return _utc
    return TaskState if name == "state" else None


_DECODERS = tuple(_decoder(name) for name in _COLUMNS)


def _from_row(row: tuple[Any, ...]) -> TaskRecord:
    """The record of a ``SELECT *`` row: a plain tuple in column order, decoded column by column.

    A page of ``list`` decodes up to 1000 of these on the event loop; by ``sqlite3.Row`` and
    name, with per-column checks, it cost twice as much (40 µs a record, not 20).
    """
    fields = [raw if raw is None or decode is None else decode(raw) for decode, raw in zip(_DECODERS, row)]
    return TaskRecord(*fields)


def _os_reason(directory: Path) -> str:
    """Why the OS refuses writes in ``directory``, by trying one: "errno 30 (EROFS): ..." or ""."""
    probe = directory / f".pymgr-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x" * 4096)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return f"; errno {exc.errno} ({errno.errorcode.get(exc.errno or 0, '?')}): {exc.strerror}"
    return ""


class SqliteStore:
    """Task records in one SQLite file (see the module rules)."""

    def __init__(
        self,
        path: Path,
        *,
        max_records: int,
        max_age_s: float | None = None,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        first_id: int = 1,
    ) -> None:
        """
        Args:
            path: the database file; created (with its directory) if missing.
            max_records, max_age_s: the retention limits (see the module rules).
            first_id: the lowest id a new database hands out (ids of log
                files already in the state directory are never reused).

        Raises:
            ValueError: ``max_records`` < 1 or ``max_age_s`` <= 0.
            Unavailable: the file cannot be opened or created, or its schema
                is newer than this code.
        """
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, not {max_records}")
        if max_age_s is not None and not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0 or None, not {max_age_s}")
        self.path = path
        self.max_records = max_records
        self.max_age_s = max_age_s
        self._depth = 0
        #: A lazy batch is open and nothing was written yet (no BEGIN issued).
        self._pending_begin = False
        self._count = 0
        self._checkpointer: sqlite3.Connection | None = None
        #: Commits of this connection so far, and their number when the checkpoint thread last started
        #: the WAL over (``checkpoint_passive``).
        self._commits = 0
        self._restarted_after = -1
        #: Why writes are refused (the directory is read-only), or None.
        self.read_only: str | None = None
        #: The open group transaction's callbacks (None: no group is open), and the row count before it.
        self._group: list[GroupCallback] | None = None
        self._group_count = 0
        try:
            self._db = self._connect(str(path), busy_timeout_s, first_id)
        except Unavailable as exc:
            reason = _os_reason(path.parent)
            if not reason or not isinstance(exc.__cause__, sqlite3.OperationalError):
                raise
            # Serve reads all the same: the file as it is (nobody can change a
            # read-only directory's file), or nothing if there is no file yet.
            self.read_only = f"task store {path} is read-only{reason}; no task can start or change until it is writable"
            uri = f"{path.absolute().as_uri()}?immutable=1" if path.exists() else ":memory:"
            self._db = self._connect(uri, busy_timeout_s, first_id, uri=True, create=not path.exists())

    def _connect(
        self, where: str, busy_timeout_s: float, first_id: int, *, uri: bool = False, create: bool = True
    ) -> sqlite3.Connection:
        with self._guard("open"):
            db = sqlite3.connect(where, isolation_level=None, timeout=busy_timeout_s, uri=uri)
            self._db = db
            if self.read_only is None:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
                # No checkpoint inside a commit: it fsyncs, which would stall the event loop
                # for milliseconds at random; ``checkpoint_passive`` runs them off the loop.
                db.execute("PRAGMA wal_autocheckpoint=0")
            if create:
                self._migrate(first_id)
            self._count = db.execute("SELECT count(*) FROM runs").fetchone()[0]
        return db

    def _migrate(self, first_id: int) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise Unavailable(
                f"task store {self.path} has schema version {version}, newer than this pymgr's "
                f"{SCHEMA_VERSION}; run the pymgr version that wrote it, or move the file away",
                details={"path": str(self.path), "version": version},
            )
        if version == SCHEMA_VERSION:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            statements = _UPGRADES[version] if version in _UPGRADES else filter(str.strip, _SCHEMA.split(";"))
            for statement in statements:
                self._db.execute(statement)
            if first_id > 1 and version not in _UPGRADES:
                self._db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', ?)", (first_id - 1,))
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # -- transactions and errors ------------------------------------------------

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._failure(what, exc) from exc

    def _failure(self, what: str, exc: sqlite3.Error) -> PymgrError:
        """The error to raise for a failed statement: Unavailable, or a bug for a broken constraint."""
        if isinstance(exc, sqlite3.IntegrityError):
            # The manager checks keys before adding: a clash here is a bug, not the disk.
            return PymgrInternalError(f"task store {self.path}: {what}: {exc}")
        name = getattr(exc, "sqlite_errorname", type(exc).__name__)
        return Unavailable(
            f"task store {self.path}: cannot {what}: {exc} ({name}){_os_reason(self.path.parent)}; nothing was changed",
            details={"path": str(self.path), "sqlite_error": name},
        )

    def _execute(self, what: str, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise self._failure(what, exc) from exc

    def batch(self, lazy: bool = False) -> _Transaction:
        """One write transaction around a ``with`` block (nested blocks join the outer one).

        With ``lazy``, the transaction begins at the first write inside the
        block, and a block that wrote nothing costs nothing (the keeper's
        reads that only bring progress or acknowledgements: no BEGIN IMMEDIATE,
        no locks, no COMMIT).

        Raises:
            Unavailable: the transaction could not start or commit; it is rolled back.
        """
        return _Transaction(self, lazy)

    def _begin(self) -> None:
        if self.read_only is not None:
            raise Unavailable(self.read_only, details={"path": str(self.path)})
        self._execute("write", "BEGIN IMMEDIATE")
        self._pending_begin = False

    def group(self, on_done: GroupCallback | None = None) -> _Group:
        """Writes inside join the group transaction, begun here if none is open (see the module rules).

        Args:
            on_done: told how the group's commit went (once, however many blocks pass it).

        Raises:
            Unavailable: the transaction could not begin, or a write inside failed (that block's
                writes are undone; the rest of the group stays, unless SQLite dropped the whole
                transaction, in which case the callbacks hear it too).
        """
        return _Group(self, on_done)

    @property
    def group_open(self) -> bool:
        return self._group is not None

    def commit_group(self) -> None:
        """Commit the open group (nothing if none); its callbacks hear how it went.

        Raises:
            Unavailable: the commit failed; the whole group is rolled back.
        """
        callbacks = self._group
        if callbacks is None:
            return
        self._group = None
        try:
            self._execute("write", "COMMIT")
        except PymgrError as exc:
            self._end_group_failed(callbacks, exc)
            raise
        self._commits += 1
        for callback in callbacks:
            callback(None)

    def _end_group_failed(self, callbacks: list[GroupCallback], error: PymgrError) -> None:
        self._group = None
        self._count = self._group_count
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        for callback in callbacks:
            callback(error)

    def _before_other(self) -> None:
        """Commit the open group before a write or read outside it.

        A failed commit is the group's (its callbacks have the error); the
        write or read goes on, in a transaction of its own.
        """
        try:
            self.commit_group()
        except PymgrError:
            pass

    # -- writes -------------------------------------------------------------------

    def add(self, record: TaskRecord) -> TaskRecord:
        """Store a new record under the next id; "{id}" in its ``log_path`` becomes that id."""
        with _Transaction(self):
            # The write lock is ours (BEGIN IMMEDIATE): the next id cannot be taken between these two statements.
            row = self._execute("add a record", _NEXT_ID_SQL).fetchone()
            task_id = max(row[0] or 0, row[1] or 0) + 1
            record = dataclasses.replace(record, id=task_id, log_path=record.log_path.replace("{id}", str(task_id)))
            self._execute("add a record", _INSERT_SQL, _insert_row(record))
            self._count += 1
        return record

    def update(self, record: TaskRecord) -> None:
        """Write what may change in a run's life (state, pid, times, outcome); the rest is fixed at ``add``."""
        with _Transaction(self):
            cursor = self._execute("update a record", _UPDATE_SQL, _update_row(record))
        if cursor.rowcount != 1:
            raise KeyError(f"no task record {record.id} to update")

    def set_progress(self, progress: Mapping[int, tuple[float, str | None]]) -> None:
        if not progress:
            return
        rows = [(percent, message, task_id) for task_id, (percent, message) in progress.items()]
        with self.batch(), self._guard("record progress"):
            self._db.executemany("UPDATE runs SET progress = ?, progress_message = ? WHERE id = ?", rows)

    def prune(self, now: datetime, by_age: bool = True) -> list[TaskRecord]:
        if (not by_age or self.max_age_s is None) and self._count <= self.max_records:
            return []  # the common case, on every start: nothing to read or write
        doomed: list[TaskRecord] = []
        with self.batch(), self._guard("prune records"):
            if by_age and self.max_age_s is not None:
                doomed += self._select(
                    f"state IN ({_TERMINAL_SQL}) AND ended_at < ? ORDER BY id", (now.timestamp() - self.max_age_s,)
                )
                self._delete(doomed)
            excess = self._count - self.max_records
            if excess > 0:
                extra = self._select(f"state IN ({_TERMINAL_SQL}) ORDER BY id LIMIT ?", (excess,))
                self._delete(extra)
                doomed += extra
        return doomed

    def _delete(self, records: list[TaskRecord]) -> None:
        self._db.executemany("DELETE FROM runs WHERE id = ?", [(r.id,) for r in records])
        self._count -= len(records)

    # -- reads --------------------------------------------------------------------

    def _select(self, where: str, args: tuple[Any, ...] = ()) -> list[TaskRecord]:
        if self._group is not None and not self._depth:
            self._before_other()
        try:
            return [_from_row(row) for row in self._db.execute(f"SELECT * FROM runs WHERE {where}", args)]
        except sqlite3.Error as exc:
            raise self._failure("read records", exc) from exc

    def get(self, task_id: int) -> TaskRecord | None:
        if not 0 < task_id <= _MAX_ID:  # no run has it, and SQLite cannot even be asked (OverflowError)
            return None
        found = self._select("id = ?", (task_id,))
        return found[0] if found else None

    def list(
        self,
        state: TaskState | None = None,
        type: str | None = None,
        key: str | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> list[TaskRecord]:
        conditions: list[str] = ["1"]
        args: list[str | int] = []
        filters = (("state = ?", state.value if state else None), ("type = ?", type), ("key = ?", key))
        for condition, value in (*filters, ("id < ?", before)):
            if value is not None:
                conditions.append(condition)
                args.append(value)
        args.append(-1 if limit is None else limit)  # SQLite: a negative LIMIT is none
        return self._select(" AND ".join(conditions) + " ORDER BY id DESC LIMIT ?", tuple(args))

    def find_active(self, key: str) -> TaskRecord | None:
        found = self._select(f"key = ? AND state IN ({_ACTIVE_SQL})", (key,))
        return found[0] if found else None

    def active(self) -> list[TaskRecord]:
        return self._select(f"state IN ({_ACTIVE_SQL}) ORDER BY id")

    def __len__(self) -> int:
        return int(self._count)

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: "ok" for a sound file."""
        self._before_other()
        with self._guard("check integrity"):
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def checkpoint_passive(self) -> None:
        """Copy committed pages from the WAL into the database file, on a connection of its own.

        Safe to call from a worker thread while the daemon keeps writing: a
        passive checkpoint never blocks a writer (it stops where a reader or
        writer is). Errors are for the caller to log; nothing depends on it.
        """
        if self.read_only is not None:
            return
        db = self._checkpointer
        if db is None:
            db = self._checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA synchronous=NORMAL")
        commits = self._commits  # the daemon's, so far (an int: read whole from another thread)
        busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy == 0 and frames > 0 and copied == frames and commits != self._restarted_after:
            # Every frame is in the main file, so the next commit starts the WAL over: it writes a new
            # WAL header and fsyncs it (synchronous=NORMAL), 0.5-2 ms on the event loop. A write that
            # changes nothing does that here instead; the daemon's next commit just appends. Only
            # after the daemon wrote since the last time: an idle daemon writes nothing.
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._restarted_after = commits

    def checkpoint(self) -> None:
        """Fold the WAL into the database file (a clean shutdown; reads keep working)."""
        if self.read_only is None:
            self._before_other()
            with self._guard("checkpoint"):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        if self._depth:
            raise PymgrInternalError("task store closed inside a transaction")
        self._before_other()
        self._db.close()
        if self._checkpointer is not None:
            self._checkpointer.close()


class _Transaction:
    """``SqliteStore.batch()``: BEGIN IMMEDIATE on the way in, COMMIT (or ROLLBACK) on the way out.

    A class, not a generator: it is on every write's path, and a
    ``@contextmanager`` costs several times more per use.
    """

    __slots__ = ("_store", "_count", "_outer", "_lazy")

    def __init__(self, store: SqliteStore, lazy: bool = False) -> None:
        self._store = store
        self._count = 0
        self._outer = False
        self._lazy = lazy

    def __enter__(self) -> None:
        store = self._store
        if store._depth:
            if store._pending_begin:  # the first write inside a lazy batch: begin it now
                store._begin()
            store._depth += 1
            return
        if store._group is not None:
            store._before_other()
        if self._lazy:
            store._pending_begin = True
        else:
            store._begin()
        store._depth = 1
        self._outer = True
        self._count = store._count

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        store = self._store
        if not self._outer:
            store._depth -= 1
            return
        store._depth = 0
        if store._pending_begin:  # a lazy batch that wrote nothing: nothing to commit or roll back
            store._pending_begin = False
            return
        if exc_type is None:
            try:
                store._execute("write", "COMMIT")
                store._commits += 1
                return
            except Unavailable:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        store = self._store
        store._count = self._count
        if store._db.in_transaction:
            store._db.execute("ROLLBACK")


class _Group:
    """``SqliteStore.group()``: one savepoint of the group transaction (see the module rules)."""

    __slots__ = ("_store", "_on_done", "_count", "_savepoint")

    def __init__(self, store: SqliteStore, on_done: GroupCallback | None) -> None:
        self._store = store
        self._on_done = on_done
        self._count = 0
        #: False when this block began the transaction: it is all of it, so no savepoint is needed.
        self._savepoint = False

    def __enter__(self) -> None:
        store = self._store
        if store._depth:
            raise PymgrInternalError("a task store group cannot begin inside another transaction")
        self._count = store._count
        if store._group is None:
            store._begin()
            store._group = []
            store._group_count = store._count
        else:
            store._execute("write", "SAVEPOINT staged")
            self._savepoint = True
        if self._on_done is not None and self._on_done not in store._group:
            store._group.append(self._on_done)
        store._depth = 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._store._depth = 0
        if exc_type is None:
            if self._savepoint:
                try:
                    self._store._execute("write", "RELEASE staged")
                except Unavailable as error:
                    self._undo(error)
                    raise
            return
        self._undo(exc)

    def _undo(self, exc: BaseException | None) -> None:
        store = self._store
        store._count = self._count
        if self._savepoint and store._db.in_transaction:
            store._db.execute("ROLLBACK TO staged")
            store._db.execute("RELEASE staged")
        elif store._group is not None:  # the block was the whole group, or SQLite dropped the transaction
            failure = exc if isinstance(exc, PymgrError) else Unavailable(f"task store {store.path}: {exc}")
            store._end_group_failed(store._group, failure)
