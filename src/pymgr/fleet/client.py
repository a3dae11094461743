"""``FleetClient``: submit signed jobs to a fleet, stop them, and read what hosts report (sync).

What it shares with ``AsyncFleetClient`` (the constructor, the scripts, the
signed entries) is in ``api.py``; each request's steps in ``steps.py``; what
both return in ``results.py``. Here is the I/O, through redis-py's blocking
client: ``_drive`` runs a request's steps, and each method is one call of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, TypeVar

import redis

from pymgr.fleet import steps
from pymgr.fleet.api import FleetApi
from pymgr.fleet.results import HostInfo, JobInfo, OutputChunk, StopResult, ended, taken
from pymgr.fleet.steps import REDIS_DOWN, Clock, Emit, Op, Sleep, Stepper, Steps

__all__ = ["FleetClient", "HostInfo", "JobInfo", "OutputChunk", "StopResult"]

T = TypeVar("T")


class FleetClient(FleetApi):
    """Submit jobs to a fleet, stop them and read their state (sync); arguments as ``FleetApi``'s."""

    def _connect(self, redis_url: str, **options: Any) -> Any:
        return redis.Redis.from_url(redis_url, **options)

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, request: Steps[T]) -> T:
        """The result of a request that emits nothing."""
        stepper = Stepper(request)
        for chunk in self._drive(stepper):
            raise RuntimeError(f"a request with a result emitted output (entry {chunk.entry_id})")
        return stepper.result

    def _drive(self, stepper: Stepper[Any]) -> Iterator[OutputChunk]:
        """Runs a request's steps (``steps.py``) over this client's Redis; yields the chunks they emit."""
        op = stepper.send(None)
        while op is not None:
            if isinstance(op, Emit):
                yield op.chunk
                op = stepper.send(None)
                continue
            try:
                reply = self._io(op)
            except REDIS_DOWN as exc:
                op = stepper.throw(exc)
            else:
                op = stepper.send(reply)

    def _io(self, op: Op) -> Any:
        if isinstance(op, Sleep):
            time.sleep(op.seconds)
            return None
        if isinstance(op, Clock):
            return time.monotonic()
        assert not isinstance(op, Emit)  # _drive hands chunks to the caller
        return self._send(op)

    def submit(
        self,
        type: str,
        params: Mapping[str, Any] | None = None,
        *,
        host: str | None = None,
        tag: str | None = None,
        key: str | None = None,
        kind: Literal["task", "action"] = "task",
    ) -> str:
        """Sign and queue a job for one host (``host``) or any one host with a tag (``tag``).

        Args:
            type: a task type (kind ``task``) or ``module.action`` (kind ``action``).
            key: the job's id; a second submit with the same key queues nothing. Default: a random id.

        Returns:
            The job's id.

        Raises:
            ValueError: not exactly one of host and tag, no signing key, or a job hosts would refuse as malformed.
            redis.RedisError: Redis cannot be reached or refuses the write.
        """
        return self._run(self._submit_steps(type, params, host, tag, key, kind))

    def stop(self, job_id: str) -> StopResult:
        """Stop a job: cancel it if no host has taken it, else send its host a signed stop.

        The host stops the run's whole process tree as a local stop does, if its own
        policy allows the key ``tasks.stop`` of the job's type; a host that is cut off
        applies the stop when it is back. ``wait`` then tells the job's final state.

        Raises:
            ValueError: no signing key.
            LookupError: no such job, or a job that names no host.
            redis.RedisError: Redis cannot be reached or refuses the write.
        """
        return self._run(self._stop_steps(job_id))

    def show(self, job_id: str) -> JobInfo:
        """The job as its hash shows it now.

        Raises:
            LookupError: no job has this id (or its hash expired).
        """
        return self._run(steps.show(job_id))

    def jobs(
        self, *, state: str | None = None, host: str | None = None, tag: str | None = None, limit: int = 50
    ) -> list[JobInfo]:
        """The newest jobs of the index first, at most ``limit``, those passing every filter given.

        Args:
            state: only jobs in this state.
            host: only jobs this host took or that were pinned to it.
            tag: only jobs for this tag.
            limit: 1 to ``MAX_LIST``.

        Raises:
            ValueError: a state no job has, or a limit out of range.
        """
        return self._run(steps.jobs(state, host, tag, limit))

    def wait_received(self, job_id: str, timeout_s: float = 30.0) -> JobInfo:
        """Wait until a host has taken the job (or refused it); the job then.

        Raises:
            TimeoutError: no host took it within ``timeout_s`` (is a host with that id or tag alive?).
        """
        return self._run(steps.wait(job_id, timeout_s, taken, "taken"))

    def wait(self, job_id: str, timeout_s: float = 300.0) -> JobInfo:
        """Wait until the job has ended; its final state.

        Raises:
            TimeoutError: it had not ended within ``timeout_s``.
        """
        return self._run(steps.wait(job_id, timeout_s, ended, "ended"))

    def output(self, job_id: str) -> bytes:
        """The job's output as its capped stream still holds it."""
        return self._run(steps.output(job_id))

    def follow(
        self,
        job_id: str,
        after: str = "0",
        *,
        block_s: float = 0.5,
        on_reconnect: Callable[[str, Exception], None] | None = None,
    ) -> Iterator[OutputChunk]:
        """The job's output as it comes, from after the stream id ``after``, until the job has ended.

        A dropped connection or a Redis restart does not end it: it waits, and reads on after
        the last chunk it gave (``on_reconnect(last id, error)`` is told each time).

        Raises:
            LookupError: no such job.
        """
        return self._drive(Stepper(steps.follow(job_id, after, block_s, on_reconnect)))

    def hosts(self) -> list[HostInfo]:
        """Every host that has sent a heartbeat, by id: alive or not, its tags and running jobs."""
        return self._run(steps.hosts())
