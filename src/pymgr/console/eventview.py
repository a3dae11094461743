"""What browsers are sent of the daemon's run events: rendered once by the hub for all of them.

Rules:
- A ``state`` event carries the run's table row, rendered here (``_row.html``), with its duration and
  how it ended, so a page replaces the row without asking the console again; ``progress`` is passed on
  as it came; ``gap`` tells a page it missed events (the daemon's ``gap``: the hub fell behind; or its
  ``reset``: the hub's stream reopened past events the daemon no longer holds), and the page fetches
  its live parts again. Other kinds are not sent.
- It knows the templates only, not the console's state, so the state can give it to the hub.
"""

from __future__ import annotations

import json
from typing import Any

from jinja2 import Environment

from pymgr.client import Event, TaskRecord
from pymgr.console import runview


def sse(data: str, event: str | None = None, id: int | None = None) -> bytes:
    head = (f"event: {event}\n" if event else "") + (f"id: {id}\n" if id is not None else "")
    return (head + "".join(f"data: {line}\n" for line in data.split("\n")) + "\n").encode()


def _took(record: TaskRecord) -> dict[str, Any]:
    """What the task page shows of a run's time and end (its row has the same in ``row``)."""
    elapsed = runview.elapsed_s(record)
    ticking = runview.ticking(record)
    return {
        "elapsed": elapsed if ticking else None,
        "duration": runview.duration_text(elapsed),
        "ending": runview.ending(record),
    }


def browser_event(templates: Environment, event: Event) -> bytes | None:
    """An event of the daemon as browsers are sent it (the hub's ``render``), or None for other kinds."""
    data = event.data
    if event.kind == "progress" and isinstance(data, dict):
        return sse(json.dumps(data), "progress")
    if event.kind == "state":
        record = TaskRecord.from_json(data)
        row = templates.get_template("_row.html").render(run=record)
        return sse(json.dumps({"id": record.id, "state": record.state, "row": row, **_took(record)}), "state")
    if event.kind in ("gap", "reset"):
        return sse("{}", "gap")
    return None
