"""RQ and Celery in the fleet bench: three workers each on the bench's Redis, doing the no-op job.

- **RQ**: three ``rq worker`` processes, RQ's default worker class
  (``Worker``): it forks a work horse for each job, as pymgr starts a process
  for each run; that is what ``rq worker`` runs and what RQ recommends.
  ``--rq-worker simple`` runs ``SimpleWorker`` instead (the job in the worker
  process itself, no fork): RQ's fastest, shown when asked for.
  Latency: the job's own ``enqueued_at`` -> ``started_at`` (set in the work
  horse right before the function runs); the end is ``ended_at``.
- **Celery**: three ``celery worker`` processes, the default prefork pool
  with concurrency 1 (one pool child each, reused for every job: no process
  per job), the same Redis as broker and result backend; gossip, mingle and
  the worker heartbeat off (they only add broadcast traffic to the same
  Redis). Latency: the submitter's clock in the args -> the time the task
  returns from its start (``fleet_celery.noop``); the end is the result's
  ``date_done``.

Every worker runs from the repository's root (``bench.fleet_noop``
or ``bench.fleet_celery`` imported by name) with its output in a log file of the bench's temporary
directory; ``stop`` sends SIGTERM (both finish their current job and exit).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis

from bench.servers import BIN, REPO, Server, ServerError, spawn_server, stop_all

#: Seconds the workers get to register (RQ) or answer a ping (Celery).
START_TIMEOUT_S = 30.0
QUEUE = "bench"
#: Seconds the RQ workers get to exit after SIGTERM before they are killed (see ``RQPeer.stop``).
RQ_STOP_S = 2.0


def _worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), **(extra or {}))
    env.pop("PYTHONSTARTUP", None)
    return env


def _check_alive(servers: list[Server]) -> None:
    for server in servers:
        if server.proc.poll() is not None:
            raise ServerError(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")


def _wait(what: str, ready: Any, servers: list[Server]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        _check_alive(servers)
        if time.monotonic() > deadline:
            raise ServerError(f"{what} not ready within {START_TIMEOUT_S:g} s")
        time.sleep(0.1)


def _epoch(text: bytes | str | None) -> float:
    """An RQ or Celery timestamp (ISO 8601, UTC when naive) as seconds since the epoch; NaN if absent."""
    if not text:
        return math.nan
    raw = text.decode() if isinstance(text, bytes) else text
    moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


class RQPeer:
    """RQ: ``workers`` ``rq worker`` processes on one queue."""

    def __init__(self, workdir: Path, redis_url: str, workers: int = 3, simple: bool = False) -> None:
        from rq import Queue

        self.name = "RQ (SimpleWorker)" if simple else "RQ"
        self._workdir, self._url, self._count, self._simple = workdir, redis_url, workers, simple
        self._redis = redis.Redis.from_url(redis_url)
        self._queue = Queue(QUEUE, connection=self._redis)
        self._servers: list[Server] = []
        kind = (
            "SimpleWorker: the job in the worker process" if simple else "Worker: a forked work horse per job"
        )
        self.note = f"{workers} `rq worker` processes, {kind}"

    def start(self) -> None:
        from rq import Worker

        self._workdir.mkdir()
        for i in range(self._count):
            argv = [str(BIN / "rq"), "worker", "--url", self._url, "--name", f"rq{i + 1}", "--quiet"]
            if self._simple:
                argv += ["--worker-class", "rq.worker.SimpleWorker"]
            server = spawn_server(f"rq{i + 1}", [*argv, QUEUE], self._workdir, cwd=REPO, env=_worker_env())
            self._servers.append(server)
        _wait("the RQ workers", lambda: Worker.count(connection=self._redis) >= self._count, self._servers)

    def submit(self) -> tuple[str, float]:
        sent = time.time()
        return self._queue.enqueue("bench.fleet_noop.noop").id, sent

    def remaining(self, ids: list[str]) -> list[str]:
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(f"rq:job:{job_id}", "status")
        replies = pipe.execute()
        return [
            job_id
            for job_id, status in zip(ids, replies, strict=True)
            if status not in (b"finished", b"failed")
        ]

    def timestamps(self, ids: list[str], sent: list[float]) -> list[tuple[float, float, float, bool]]:
        """(enqueued_at, started_at, ended_at, succeeded) of each job, as RQ recorded them."""
        del sent  # RQ records its own enqueue time
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(f"rq:job:{job_id}", "enqueued_at", "started_at", "ended_at", "status")
        return [(_epoch(e), _epoch(s), _epoch(d), st == b"finished") for e, s, d, st in pipe.execute()]

    def pids(self) -> list[int]:
        """The workers (their work horses or pool children are their children)."""
        return [server.pid for server in self._servers]

    def stop(self) -> None:
        # Every job has ended by now. Three idle `rq worker`s sent SIGTERM together do not always exit
        # (seen with RQ 2.12, a second SIGTERM neither): killed after a short wait, they lose nothing.
        stop_all(self._servers, timeout_s=RQ_STOP_S)
        self._redis.close()


class CeleryPeer:
    """Celery: ``workers`` ``celery worker`` processes (prefork, concurrency 1), Redis as broker and backend."""

    name = "Celery"

    def __init__(self, workdir: Path, redis_url: str, socket: Path, workers: int = 3) -> None:
        self._workdir, self._count = workdir, workers
        self._celery_url = f"redis+socket://{socket}"
        self._redis = redis.Redis.from_url(redis_url)
        self._servers: list[Server] = []
        self._task: Any = None
        self.note = (
            f"{workers} `celery worker` processes, prefork pool, concurrency 1 (a pool child reused per job)"
        )

    def start(self) -> None:
        from bench import fleet_celery

        os.environ[fleet_celery.CELERY_URL_ENV] = self._celery_url
        fleet_celery.app.conf.update(broker_url=self._celery_url, result_backend=self._celery_url)
        self._task = fleet_celery.noop
        self._workdir.mkdir()
        env = _worker_env({fleet_celery.CELERY_URL_ENV: self._celery_url})
        for i in range(self._count):
            argv = [sys.executable, "-m", "celery", "-A", "bench.fleet_celery", "worker", "--pool", "prefork"]
            argv += ["--concurrency", "1", "-n", f"celery{i + 1}@%h", "--loglevel", "WARNING"]
            argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
            self._servers.append(spawn_server(f"celery{i + 1}", argv, self._workdir, cwd=REPO, env=env))
        app = fleet_celery.app
        _wait("the Celery workers", lambda: len(app.control.ping(timeout=0.5)) >= self._count, self._servers)

    def submit(self) -> tuple[str, float]:
        sent = time.time()
        return self._task.apply_async((sent,)).id, sent

    def remaining(self, ids: list[str]) -> list[str]:
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(f"celery-task-meta-{job_id}")
        return [job_id for job_id, there in zip(ids, pipe.execute(), strict=True) if not there]

    def timestamps(self, ids: list[str], sent: list[float]) -> list[tuple[float, float, float, bool]]:
        """(sent, started, date_done, succeeded) of each job: the args' clock, the task's, the result's."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.get(f"celery-task-meta-{job_id}")
        rows = []
        for at, raw in zip(sent, pipe.execute(), strict=True):
            meta = json.loads(raw)
            ok = meta["status"] == "SUCCESS"
            rows.append((at, float(meta["result"]) if ok else math.nan, _epoch(meta.get("date_done")), ok))
        return rows

    def pids(self) -> list[int]:
        """The workers (their work horses or pool children are their children)."""
        return [server.pid for server in self._servers]

    def stop(self) -> None:
        stop_all(self._servers)
        self._redis.close()
