"""How the console shows a run: how long it has taken and how it ended (template filters).

Rules:
- A duration is the run's, from ``started_at`` to ``ended_at``; a running run's is up to now, and
  ``elapsed_s`` is what ``console.js`` counts on from (the browser's clock is never compared with
  the server's). A queued run has none.
- ``duration_text`` and ``formatDuration`` in ``static/console.js`` write the same text: change both.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pymgr.client import TaskRecord


def elapsed_s(run: TaskRecord, now: datetime | None = None) -> float | None:
    """Seconds the run has taken (up to ``now`` while it has not ended), or None before it started."""
    if run.started_at is None:
        return None
    end = run.ended_at or now or datetime.now(timezone.utc)
    return max(0.0, (end - run.started_at).total_seconds())


def duration_text(seconds: float | None) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 07 min``; empty for None."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def ending(run: TaskRecord) -> str:
    """How the run's process ended: ``exit code 0``, ``signal SIGTERM``; empty while it runs."""
    if run.signal:
        return f"signal {run.signal}"
    if run.exit_code is not None:
        return f"exit code {run.exit_code}"
    return ""


def ticking(run: TaskRecord) -> bool:
    """True while the run's duration grows (the page counts it on)."""
    return run.state == "running" and run.started_at is not None and run.ended_at is None
