"""The ``runs`` table: its definition, its version and the upgrades from older versions.

Rules:
- The schema's version is ``PRAGMA user_version``; a newer one than this
  code knows is refused at open, never silently used.
- An older version is brought to this one in one transaction, by the
  statements of ``UPGRADES`` for the version it starts from.
- At most one active (queued or running) record per key, enforced by a
  partial unique index (``find_active`` answers from it).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pymgr.errors import Unavailable
from pymgr.tasks.states import ACTIVE, TERMINAL

#: The schema this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = 4

#: Who started a run, as ``list_runs`` filters it: the person a delegate acted for (``console:alice``),
#: else the direct caller's user name. Written once: SQLite uses an index on an expression only for a
#: query that spells the same expression.
STARTER_SQL = "coalesce(json_extract(started_by, '$.person'), json_extract(started_by, '$.user'))"
STARTER_INDEX = f"CREATE INDEX runs_started_by ON runs({STARTER_SQL})"
#: One index per ``list_runs`` filter: each holds the rowid (the id) after its column, so a filtered
#: page newest first is a seek and a walk backwards, whatever the history's size (``runs(state)``
#: also serves ``active``, as the partial index of schema 2 did).
LIST_INDEXES = (
    "CREATE INDEX runs_state ON runs(state)",
    "CREATE INDEX runs_type ON runs(type)",
    "CREATE INDEX runs_key ON runs(key) WHERE key IS NOT NULL",
    STARTER_INDEX,
)
#: What brings a store of an older schema to this one, by the version it starts from.
UPGRADES = {
    1: ("ALTER TABLE runs ADD COLUMN cgroup TEXT", "DROP INDEX IF EXISTS runs_active", *LIST_INDEXES),
    2: ("DROP INDEX IF EXISTS runs_active", *LIST_INDEXES),
    3: (STARTER_INDEX,),
}

#: The states a query writes into SQL, quoted (``state IN (...)``).
ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE))
TERMINAL_SQL = ", ".join(f"'{s.value}'" for s in sorted(TERMINAL))

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
CREATE UNIQUE INDEX runs_active_key ON runs(key) WHERE key IS NOT NULL AND state IN ({ACTIVE_SQL});
CREATE INDEX runs_ended_at ON runs(ended_at) WHERE ended_at IS NOT NULL;
""" + ";\n".join(LIST_INDEXES)


def migrate(db: sqlite3.Connection, path: Path, first_id: int) -> None:
    """Create the table, or upgrade it, to ``SCHEMA_VERSION``.

    Args:
        db: the store's connection (autocommit: ``isolation_level=None``).
        path: the file, for the error message.
        first_id: the lowest id a new table hands out.

    Raises:
        Unavailable: the file's schema is newer than this code.
        sqlite3.Error: a statement failed (the transaction is rolled back).
    """
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise Unavailable(
            f"task store {path} has schema version {version}, newer than this pymgr's "
            f"{SCHEMA_VERSION}; run the pymgr version that wrote it, or move the file away",
            details={"path": str(path), "version": version},
        )
    if version == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        statements = UPGRADES[version] if version in UPGRADES else filter(str.strip, _SCHEMA.split(";"))
        for statement in statements:
            db.execute(statement)
        if first_id > 1 and version not in UPGRADES:
            db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', ?)", (first_id - 1,))
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
