"""Celery's app and job in the fleet bench (bench/bench_fleet.py): a task that returns when it started.

The workers import this module as their app (``-A bench.fleet_celery``).
Its broker and result backend are the bench's Redis, named by the
environment variable ``PYMGR_BENCH_CELERY_URL`` (``redis+socket:///path``),
which the bench sets for its workers and itself.
"""

from __future__ import annotations

import os
import time

from celery import Celery

#: The Redis of the bench run, as kombu names a Unix socket.
CELERY_URL_ENV = "PYMGR_BENCH_CELERY_URL"

app = Celery("pymgr_bench", broker=os.environ.get(CELERY_URL_ENV), backend=os.environ.get(CELERY_URL_ENV))
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # Workers stay quiet: their logs are not what is measured.
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop(sent: float) -> float:
    """Nothing but the time it started; ``sent`` is the submitter's clock at ``apply_async``."""
    del sent  # carried as RQ's and pymgr's jobs carry their submit time; the bench keeps its own copy
    return time.time()
