"""The manager's periodic work: progress to the store, retention, WAL checkpoints, lost news asked again.

Rules:
- Progress is written every ``progress_flush_s``, retention applied every
  ``prune_interval_s`` (the logs of dropped records go with them), the
  store checkpointed every ``store_checkpoint_s``.
- The checkpoint runs in a worker thread: the one thread the daemon uses,
  and only for this (its fsync must not stall the event loop).
- A store that refuses is logged and tried again next time; news the
  keeper could not have recorded is asked for again once it is synced.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime

from pymgr.config import TasksConfig
from pymgr.errors import Unavailable
from pymgr.tasks.logreader import LogReader
from pymgr.tasks.runtable import RunTable
from pymgr.tasks.store import TaskStore
from pymgr.tasks.supervision import Supervision

log = logging.getLogger("pymgr.tasks")


async def housekeeping(
    config: Callable[[], TasksConfig],
    store: TaskStore,
    table: RunTable,
    logs: LogReader,
    supervision: Supervision,
    clock: Callable[[], datetime],
) -> None:
    """Run until cancelled (see the module rules)."""
    next_prune = next_checkpoint = 0.0
    while True:
        settings = config()
        await asyncio.sleep(min(settings.progress_flush_s, settings.store_checkpoint_s))
        now = time.monotonic()
        try:
            table.flush_progress()
            if now >= next_prune:
                next_prune = now + settings.prune_interval_s
                for old in store.prune(clock()):
                    logs.remove(old.id)
        except Unavailable as exc:
            log.warning("task store: %s", exc)
        if now >= next_checkpoint:
            next_checkpoint = now + settings.store_checkpoint_s
            await _checkpoint(store)
        supervision.resend_if_needed()


async def _checkpoint(store: TaskStore) -> None:
    try:
        await asyncio.to_thread(store.checkpoint_passive)
    except sqlite3.Error as exc:
        log.warning("task store: WAL checkpoint failed (it is tried again): %s", exc)
