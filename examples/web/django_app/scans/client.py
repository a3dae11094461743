"""The pymgr client of this process, and how the views read the daemon's results.

Why one client per process, not one per request: a ``Client`` keeps a pool
of connections to the daemon's socket; making one in every view would open
and close a connection per page, and forget to close it on an error path.
``functools.cache`` makes it on first use, once per process: a runserver or
gunicorn worker process makes its own (a client must not cross a ``fork``),
and its threads share it (httpx clients are thread-safe). The same function
serves the views and the management command.
"""

from __future__ import annotations

import functools
from typing import Any

from pymgr.client import Client

#: A run in one of these states has ended.
ENDED = {"succeeded", "failed", "stopped", "timed_out", "lost"}


@functools.cache
def pymgr() -> Client:
    # With no argument the client finds the socket itself: $PYMGR_SOCKET,
    # ./var/pymgr.sock (a development daemon's), or /run/pymgr/pymgr.sock.
    return Client()


# ---- Reading the daemon's results: the only places that know their fields.


def task_view(record: dict[str, Any]) -> dict[str, Any]:
    """What the page (and the management command) shows of a task record."""
    return {
        "id": record["id"],
        "key": record["key"],
        "state": record["state"],
        "progress": record["progress"],
        "message": record["progress_message"],
        "exit_code": record["exit_code"],
        "ended": record["state"] in ENDED,
    }


def action_list(modules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The listing of modules as one flat list of the actions in it."""
    return [
        {"module": module["name"], "action": action["name"], "doc": action["doc"]}
        for module in modules
        for action in module["actions"]
    ]


def progress_view(event: dict[str, Any]) -> dict[str, Any] | None:
    """A run's state or progress from one of its events (None for the markers: heartbeat, gap, reset)."""
    if event["kind"] == "state":
        return task_view(event["data"])
    if event["kind"] == "progress":
        return {"progress": event["data"]["progress"], "message": event["data"]["progress_message"]}
    return None
