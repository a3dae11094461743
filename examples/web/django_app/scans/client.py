"""The views' pymgr client, and what the page is shown of a task record.

Why one client per process, not one per request: a ``Client`` keeps a pool
of connections to the daemon's socket; making one in every view would open
and close a connection per page, and forget to close it on an error path.
``functools.cache`` makes it on first use, once per process: a runserver or
gunicorn worker process makes its own (a client must not cross a ``fork``),
and its threads share it (httpx clients are thread-safe). It does not retry:
a view answers a 429 or 503 at once, with ``Retry-After`` (scans/errors.py).
The management command makes its own client, which does (pymgr_scan.py).
"""

from __future__ import annotations

import functools
from typing import TypedDict

from pymgr.client import Client, TaskRecord, TaskState


@functools.cache
def pymgr() -> Client:
    # With no argument the client finds the socket itself: $PYMGR_SOCKET,
    # ./var/pymgr.sock (a development daemon's), or /run/pymgr/pymgr.sock.
    return Client()


class ScanView(TypedDict):
    """What the page shows of a task record (the views' JSON answer for a scan)."""

    id: int
    key: str | None
    state: TaskState
    progress: float | None
    message: str | None
    exit_code: int | None
    ended: bool


def scan_view(record: TaskRecord) -> ScanView:
    """No more than the page shows: a record also holds the command line, pids and who started the run."""
    return {
        "id": record.id,
        "key": record.key,
        "state": record.state,
        "progress": record.progress,
        "message": record.progress_message,
        "exit_code": record.exit_code,
        "ended": record.is_final,
    }
