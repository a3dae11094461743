"""The one log line per run transition, always in the same shape.

``  2.03s ✓ task 3 scan: succeeded exit 0``: seconds since the run was
created, a mark for the new state, the id and type, the outcome in words
(after arq's ``run_job`` lines). Who asked is named by transport and the
identity fields that are set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TaskState

#: One mark per state, so a column of lines reads at a glance.
MARKS = {
    TaskState.QUEUED: "·",
    TaskState.RUNNING: "→",
    TaskState.SUCCEEDED: "✓",
    TaskState.FAILED: "✗",
    TaskState.STOPPED: "⊘",
    TaskState.TIMED_OUT: "⌛",
    TaskState.LOST: "?",
}


def who(identity: Mapping[str, Any]) -> str:
    """``unix user=www-data uid=33``: the transport and the identity fields that are set."""
    parts = [str(identity.get("transport"))]
    for name in ("person", "user", "uid", "key_id", "peer"):
        if identity.get(name) is not None:
            parts.append(f"{name}={identity[name]}")
    return " ".join(parts)


def outcome(record: TaskRecord) -> str:
    """``failed exit 3``, ``stopped (user) signal SIGTERM``, ``running pid 1234``."""
    words = [record.state.value]
    if record.cancel_source is not None:
        words.append(f"({record.cancel_source})")
    if record.state is TaskState.RUNNING:
        words.append(f"pid {record.pid}")
    if record.exit_code is not None:
        words.append(f"exit {record.exit_code}")
    if record.signal is not None:
        words.append(f"signal {record.signal}")
    if record.error is not None:
        words.append(f"- {record.error}")
    return " ".join(words)
