"""RQ's job in the fleet bench (bench/bench_fleet.py): nothing, in a module that imports nothing.

RQ's forking worker imports the job's module in each work horse it forks
(the worker itself never imports it), so anything imported here is paid
per job: this module stays empty on purpose. Celery's job is in
``fleet_celery.py``; pymgr's is ``/bin/true``.
"""


def noop() -> None:
    """Nothing; RQ records enqueued_at, started_at and ended_at itself."""
