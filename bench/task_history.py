"""The history figure of bench_tasks.py: ``GET /v1/tasks`` paged and filtered, with a full history behind it.

Rules:
- The history is written before the daemon starts, straight into its store
  with pymgr's own ``SqliteStore`` (the schema and encoding the daemon
  reads): 10,000 ended runs by default, ``[tasks] max_records``'s default.
  Starting them through the daemon would take minutes and measure starts.
- It is shaped like a busy host's: five types, 500 keys of 20 runs each,
  85% succeeded, 10% failed, 5% stopped, one run a second up to now (so
  ``max_age_days`` keeps them all).
- Every query is asked ``requests`` times in sequence on one keep-alive
  connection, the pages of a walk following the ``Link`` header; the figure
  is the worst query's p99, the others are reported beside it.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench._proc import cpu_seconds
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TaskState
from pymgr.tasks.store import SqliteStore

TYPES = ("backup", "scan", "report", "sync", "thumbnail")
KEYS = 500
#: Ended states, a run in twenty: 17 succeeded, 2 failed, 1 stopped.
STATES = (TaskState.SUCCEEDED,) * 17 + (TaskState.FAILED,) * 2 + (TaskState.STOPPED,)

#: What a caller of a busy host asks: the newest page, one per filter and their combination, a
#: walk through every failed run (page after page, by the Link header), and a page deep in the history.
QUERIES = {
    "newest page": "/v1/tasks",
    "state=failed": "/v1/tasks?state=failed",
    "type=backup": "/v1/tasks?type=backup",
    "key=site:7": "/v1/tasks?key=site:7",
    "state+type+key": "/v1/tasks?state=succeeded&type=sync&key=site:8",
    "walk state=failed": "/v1/tasks?state=failed",
    "deep page": "/v1/tasks?type=report&before={middle}",
}


def seed(state_dir: Path, count: int) -> None:
    """Write ``count`` ended runs into ``state_dir/tasks.db`` (created, as the daemon's own, mode 0600)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = SqliteStore(state_dir / "tasks.db", max_records=max(count, 1))
    now = datetime.now(timezone.utc)
    with store.batch():
        for n in range(count):
            created = now - timedelta(seconds=count - n)
            store.add(
                TaskRecord(
                    id=0,
                    type=TYPES[n % len(TYPES)],
                    key=f"site:{n % KEYS}",
                    params={"site": n % KEYS},
                    argv=["/usr/local/bin/job", str(n % KEYS)],
                    state=STATES[n % len(STATES)],
                    started_by={"transport": "unix", "uid": 33, "user": "www-data"},
                    created_at=created,
                    log_path=str(state_dir / "logs" / "{id}.log"),
                    marker=f"{n:016x}",
                    pid=10_000 + n,
                    exit_code=0,
                    started_at=created,
                    ended_at=created + timedelta(seconds=0.5),
                )
            )
    store.close()


def link_next(headers: dict[str, str]) -> str | None:
    """The URL of ``Link: <URL>; rel="next"``, or None."""
    link = headers.get("link", "")
    return link[1 : link.index(">")] if 'rel="next"' in link else None


def percentile_ms(latencies: list[float], fraction: float) -> float:
    ordered = sorted(latencies)
    return ordered[max(0, int(len(ordered) * fraction) - 1)] * 1000


async def measure(conn: Any, daemon_pid: int, records: int, requests: int) -> dict[str, Any]:
    """p99 of each query over ``requests`` calls on ``conn`` (a ``unix_http.Conn``); the worst is the figure.

    The daemon's CPU time per request is taken too: on a shared machine the p99 is mostly
    waiting for a CPU, and the CPU time says what pymgr itself spends.
    """
    per_query: dict[str, float] = {}
    medians: dict[str, float] = {}
    cpu_ms: dict[str, float] = {}
    for name, target in QUERIES.items():
        target = target.format(middle=records // 2)
        latencies, url = [], target
        cpu_before = cpu_seconds(daemon_pid)
        for _ in range(requests):
            started = time.perf_counter()
            status, headers, body = await conn.request_with_headers("GET", url)
            latencies.append(time.perf_counter() - started)
            if status != 200 or not body.startswith(b'{"ok":true'):
                raise SystemExit(f"GET {url}: {status} {body[:200]!r}")
            if name.startswith("walk"):
                url = link_next(headers) or target
        cpu_ms[name] = (cpu_seconds(daemon_pid) - cpu_before) / requests * 1000
        per_query[name] = percentile_ms(latencies, 0.99)
        medians[name] = percentile_ms(latencies, 0.5)
    worst = max(per_query, key=per_query.__getitem__)
    return {
        "history_records": records,
        "history_p99_ms": per_query[worst],
        "history_worst_query": worst,
        "history_p99_by_query_ms": per_query,
        "history_p50_by_query_ms": medians,
        "history_cpu_ms_by_query": cpu_ms,
    }
