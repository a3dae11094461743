"""``SqliteStore``: task records in one SQLite file, ``<state_dir>/tasks.db``.

Rules:
- Ids are SQLite's ``INTEGER PRIMARY KEY AUTOINCREMENT``: increasing and never
  reused, not even after the newest rows were deleted.
- Retention: at most ``max_records`` rows, and (when ``max_age_s`` is set)
  no ended row older than that. Only *ended* rows are ever dropped, oldest
  first, so while more than ``max_records`` runs are active the store holds
  more. ``prune`` returns what it dropped, so the caller deletes their logs.
- Every write is one ``BEGIN IMMEDIATE`` transaction (``batch()`` groups
  several into one; ``batch(lazy=True)`` begins only at its first write,
  so a block that writes nothing takes no lock and commits nothing).
  WAL mode with ``synchronous=NORMAL``: a commit is in the WAL file when
  ``commit()`` returns, so it survives the daemon being killed
  (``kill -9``) at any point; only a power loss or kernel crash can take
  back the last commits, never corrupt the file. ``busy_timeout`` lets a
  second reader (``sqlite3`` on the command line) wait instead of failing.
- Reads only read: they never commit or write anything.
- No checkpoint runs inside a commit (``wal_autocheckpoint=0``): the
  daemon runs ``checkpoint_passive`` in a worker thread every few seconds,
  so the fsync a checkpoint needs never stalls the event loop; nor does the
  fsync of the new WAL header after it (the worker's connection starts the
  WAL over itself).
- A write that fails (read-only or full disk, I/O error) raises
  ``Unavailable`` naming the file, SQLite's error and the OS errno, and
  changes nothing: the transaction is rolled back. Reads keep working.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from pymgr.errors import PymgrError, PymgrInternalError, Unavailable
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TaskState
from pymgr.tasks.store import failures, rows
from pymgr.tasks.store.schema import ACTIVE_SQL, SCHEMA_VERSION, STARTER_SQL, TERMINAL_SQL, migrate

#: The largest id a run can have: SQLite's INTEGER is a signed 64-bit number.
_MAX_ID = 2**63 - 1
#: The runs by state: SQLite answers it from the ``runs(state)`` index alone (a covering index), a walk
#: of 10,000 small entries at the default ``max_records``, never of the rows.
COUNT_BY_STATE_SQL = "SELECT state, count(*) FROM runs GROUP BY state"

#: Seconds a write waits for another connection's lock before failing; the
#: daemon is the only writer, so this only covers an operator's sqlite3 shell.
DEFAULT_BUSY_TIMEOUT_S = 5.0


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
        #: Nesting of ``batch`` blocks (0: no transaction of ours is open).
        self._depth = 0
        #: A lazy batch is open and nothing was written yet (no BEGIN issued).
        self._pending_begin = False
        self._count = 0
        self._checkpointer: sqlite3.Connection | None = None
        #: Commits of this connection so far, and their number when the checkpoint
        #: thread last started the WAL over (``checkpoint_passive``).
        self._commits = 0
        self._restarted_after = -1
        #: Why writes are refused (the directory is read-only), or None.
        self.read_only: str | None = None
        self._db = self._open(busy_timeout_s, first_id)

    def _open(self, busy_timeout_s: float, first_id: int) -> sqlite3.Connection:
        try:
            return self._connect(str(self.path), busy_timeout_s, first_id)
        except Unavailable as exc:
            reason = failures.os_reason(self.path.parent)
            if not reason or not isinstance(exc.__cause__, sqlite3.OperationalError):
                raise
        # Serve reads all the same: the file as it is (nobody can change a
        # read-only directory's file), or nothing if there is no file yet.
        self.read_only = (
            f"task store {self.path} is read-only{reason}; no task can start or change until it is writable"
        )
        exists = self.path.exists()
        uri = f"{self.path.absolute().as_uri()}?immutable=1" if exists else ":memory:"
        return self._connect(uri, busy_timeout_s, first_id, uri=True, create=not exists)

    def _connect(
        self, where: str, busy_timeout_s: float, first_id: int, *, uri: bool = False, create: bool = True
    ) -> sqlite3.Connection:
        with self._guard("open"):
            db = sqlite3.connect(where, isolation_level=None, timeout=busy_timeout_s, uri=uri)
            if self.read_only is None:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
                # No checkpoint inside a commit: it fsyncs, which would stall the event loop
                # for milliseconds at random; ``checkpoint_passive`` runs them off the loop.
                db.execute("PRAGMA wal_autocheckpoint=0")
            if create:
                migrate(db, self.path, first_id)
            self._count = db.execute("SELECT count(*) FROM runs").fetchone()[0]
        return db

    # -- transactions and errors ------------------------------------------------

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._failure(what, exc) from exc

    def _failure(self, what: str, exc: sqlite3.Error) -> PymgrError:
        return failures.failure(self.path, what, exc)

    def _execute(self, what: str, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise self._failure(what, exc) from exc

    @contextlib.contextmanager
    def batch(self, lazy: bool = False) -> Iterator[None]:
        """One write transaction around a ``with`` block (nested blocks join the outer one).

        With ``lazy``, the transaction begins at the first write inside the
        block, and a block that wrote nothing costs nothing (no BEGIN
        IMMEDIATE, no lock, no COMMIT).

        Raises:
            Unavailable: the transaction could not start or commit; it is rolled back.
        """
        if self._depth:
            if self._pending_begin:  # the first write inside a lazy batch: begin it now
                self._begin()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        count = self._count
        if lazy:
            self._pending_begin = True
        else:
            self._begin()
        self._depth = 1
        try:
            yield
        except BaseException:
            self._end(count, commit=False)
            raise
        self._end(count, commit=True)

    def _begin(self) -> None:
        if self.read_only is not None:
            raise Unavailable(self.read_only, details={"path": str(self.path)})
        self._execute("write", "BEGIN IMMEDIATE")
        self._pending_begin = False

    def _end(self, count_before: int, *, commit: bool) -> None:
        """Close the outermost batch: commit it (rolled back if that fails) or roll it back."""
        self._depth = 0
        if self._pending_begin:  # a lazy batch that wrote nothing: nothing to commit or roll back
            self._pending_begin = False
            return
        if commit:
            try:
                self._execute("write", "COMMIT")
                self._commits += 1
                return
            except Unavailable:
                self._rollback(count_before)
                raise
        self._rollback(count_before)

    def _rollback(self, count_before: int) -> None:
        self._count = count_before
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    # -- writes -------------------------------------------------------------------

    def add(self, record: TaskRecord) -> TaskRecord:
        """Store a new record under the next id; "{id}" in its ``log_path`` becomes that id."""
        with self.batch():
            # The write lock is ours (BEGIN IMMEDIATE): nobody takes the next id between these statements.
            row = self._execute("add a record", rows.NEXT_ID_SQL).fetchone()
            task_id = max(row[0] or 0, row[1] or 0) + 1
            record = dataclasses.replace(
                record, id=task_id, log_path=record.log_path.replace("{id}", str(task_id))
            )
            self._execute("add a record", rows.INSERT_SQL, rows.insert_row(record))
            self._count += 1
        return record

    def update(self, record: TaskRecord) -> None:
        """Write what may change in a run's life (state, pid, times, outcome); the rest is fixed at ``add``.

        Raises:
            KeyError: no record has ``record.id``.
        """
        with self.batch():
            cursor = self._execute("update a record", rows.UPDATE_SQL, rows.update_row(record))
        if cursor.rowcount != 1:
            raise KeyError(f"no task record {record.id} to update")

    def set_progress(self, progress: Mapping[int, tuple[float, str | None]]) -> None:
        """Record the latest progress of several runs in one transaction."""
        if not progress:
            return
        values = [(percent, message, task_id) for task_id, (percent, message) in progress.items()]
        with self.batch(), self._guard("record progress"):
            self._db.executemany("UPDATE runs SET progress = ?, progress_message = ? WHERE id = ?", values)

    def prune(self, now: datetime, by_age: bool = True) -> list[TaskRecord]:
        """Drop ended records past the retention limits (by count only unless ``by_age``); returns them."""
        if (not by_age or self.max_age_s is None) and self._count <= self.max_records:
            return []  # the common case, on every start: nothing to read or write
        doomed: list[TaskRecord] = []
        with self.batch(), self._guard("prune records"):
            if by_age and self.max_age_s is not None:
                cutoff = now.timestamp() - self.max_age_s
                doomed += self._select(f"state IN ({TERMINAL_SQL}) AND ended_at < ? ORDER BY id", (cutoff,))
                self._delete(doomed)
            excess = self._count - self.max_records
            if excess > 0:
                extra = self._select(f"state IN ({TERMINAL_SQL}) ORDER BY id LIMIT ?", (excess,))
                self._delete(extra)
                doomed += extra
        return doomed

    def set_retention(self, max_records: int, max_age_s: float | None) -> None:
        """Change the retention limits (a reload); the next ``prune`` applies them."""
        self.max_records, self.max_age_s = max_records, max_age_s

    def _delete(self, records: list[TaskRecord]) -> None:
        self._db.executemany("DELETE FROM runs WHERE id = ?", [(r.id,) for r in records])
        self._count -= len(records)

    # -- reads --------------------------------------------------------------------

    def _select(self, where: str, args: tuple[Any, ...] = ()) -> list[TaskRecord]:
        with self._guard("read records"):
            return [rows.from_row(row) for row in self._db.execute(f"SELECT * FROM runs WHERE {where}", args)]

    def get(self, task_id: int) -> TaskRecord | None:
        """The record with this id, or None."""
        if not 0 < task_id <= _MAX_ID:  # no run has it, and SQLite cannot even be asked (OverflowError)
            return None
        found = self._select("id = ?", (task_id,))
        return found[0] if found else None

    def list_runs(
        self,
        state: TaskState | None = None,
        type: str | None = None,
        key: str | None = None,
        limit: int | None = None,
        before: int | None = None,
        started_by: str | None = None,
    ) -> list[TaskRecord]:
        """Records matching every filter given, newest first: at most ``limit``, ids below ``before``."""
        conditions: list[str] = ["1"]
        args: list[str | int] = []
        filters = (
            ("state = ?", state.value if state else None),
            ("type = ?", type),
            ("key = ?", key),
            (f"{STARTER_SQL} = ?", started_by),
        )
        for condition, value in (*filters, ("id < ?", before)):
            if value is not None:
                conditions.append(condition)
                args.append(value)
        args.append(-1 if limit is None else limit)  # SQLite: a negative LIMIT is none
        return self._select(" AND ".join(conditions) + " ORDER BY id DESC LIMIT ?", tuple(args))

    def count_by_state(self) -> dict[TaskState, int]:
        """How many records there are in each state: one ``GROUP BY`` over the ``runs(state)`` index,
        never over the rows (a state without any is left out)."""
        with self._guard("count records"):
            found = self._db.execute(COUNT_BY_STATE_SQL).fetchall()
        return {TaskState(state): count for state, count in found}

    def find_active(self, key: str) -> TaskRecord | None:
        """The queued or running record with this key, or None."""
        found = self._select(f"key = ? AND state IN ({ACTIVE_SQL})", (key,))
        return found[0] if found else None

    def active(self) -> list[TaskRecord]:
        """Every queued or running record, oldest first."""
        return self._select(f"state IN ({ACTIVE_SQL}) ORDER BY id")

    def __len__(self) -> int:
        return self._count

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: "ok" for a sound file."""
        with self._guard("check integrity"):
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    # -- checkpoints and closing ----------------------------------------------------

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
            db = self._checkpointer = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
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
            with self._guard("checkpoint"):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Release the store.

        Raises:
            PymgrInternalError: a ``batch`` is still open.
        """
        if self._depth:
            raise PymgrInternalError("task store closed inside a transaction")
        self._db.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
