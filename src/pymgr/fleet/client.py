"""``FleetClient``: submit signed jobs to a fleet, stop them, and read what hosts report (sync).

What it shares with ``AsyncFleetClient`` (the constructor, the scripts, the
signed entries) is in ``api.py``; what both return is in ``results.py``.
Here is the I/O, through redis-py's blocking client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import redis

from pymgr.fleet.api import LIST_PAGE, POLL_S, FleetApi, check_list_filters, matches, now_text
from pymgr.fleet.keyspace import HOSTS, JOBS, heartbeat_key, job_key, output_key
from pymgr.fleet.results import (
    HostInfo,
    JobInfo,
    OutputChunk,
    StopResult,
    chunk_of,
    ended,
    host_info_of,
    job_info_of,
    not_in_time,
    taken,
    text_of,
)

__all__ = ["FleetClient", "HostInfo", "JobInfo", "OutputChunk", "StopResult"]

#: What a dropped or restarting Redis raises while following; the follow waits and goes on.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


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
        job_id, keys, args = self._submission(type, params, host, tag, key, kind)
        self._submit_script(keys=keys, args=args)
        return job_id

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
        state = self._cancel_script(keys=[job_key(job_id)], args=[now_text()])
        result = self._stop_before_sending(job_id, state)
        if result is not None:
            return result
        result, stream, entry = self._stop_entry(self.show(job_id))
        if stream is not None:
            self._redis.xadd(stream, entry)
        return result

    def show(self, job_id: str) -> JobInfo:
        """The job as its hash shows it now.

        Raises:
            LookupError: no job has this id (or its hash expired).
        """
        return job_info_of(job_id, self._redis.hgetall(job_key(job_id)))

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
        check_list_filters(state, limit)
        found: list[JobInfo] = []
        for start in range(0, self._redis.zcard(JOBS), LIST_PAGE):
            ids = [text_of(i) for i in self._redis.zrevrange(JOBS, start, start + LIST_PAGE - 1)]
            pipe = self._redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(job_key(job_id))
            for job_id, raw in zip(ids, pipe.execute(), strict=True):
                if raw and matches(info := job_info_of(job_id, raw), state, host, tag):
                    found.append(info)
                    if len(found) == limit:
                        return found
        return found

    def wait_received(self, job_id: str, timeout_s: float = 30.0) -> JobInfo:
        """Wait until a host has taken the job (or refused it); the job then.

        Raises:
            TimeoutError: no host took it within ``timeout_s`` (is a host with that id or tag alive?).
        """
        return self._wait(job_id, timeout_s, taken, "taken")

    def wait(self, job_id: str, timeout_s: float = 300.0) -> JobInfo:
        """Wait until the job has ended; its final state.

        Raises:
            TimeoutError: it had not ended within ``timeout_s``.
        """
        return self._wait(job_id, timeout_s, ended, "ended")

    def output(self, job_id: str) -> bytes:
        """The job's output as its capped stream still holds it."""
        return b"".join(fields[b"data"] for _, fields in self._redis.xrange(output_key(job_id)))

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
        self.show(job_id)
        last, ended_seen = after, False
        while True:
            # Once the job has ended, one more read without blocking takes what came just before the end.
            block = None if ended_seen else int(block_s * 1000)
            try:
                reply = self._redis.xread({output_key(job_id): last}, count=100, block=block)
                if not reply:
                    if ended_seen:
                        return
                    ended_seen = self._ended(job_id)
                    continue
            except REDIS_DOWN as exc:
                if on_reconnect is not None:
                    on_reconnect(last, exc)
                time.sleep(block_s)
                continue
            for entry_id, fields in reply[0][1]:
                chunk = chunk_of(entry_id, fields)
                yield chunk
                last = chunk.entry_id

    def _ended(self, job_id: str) -> bool:
        try:
            return self.show(job_id).final
        except LookupError:  # Redis restarted empty: the host writes the hash again when the job ends
            return False

    def hosts(self) -> list[HostInfo]:
        """Every host that has sent a heartbeat, by id: alive or not, its tags and running jobs."""
        ids = sorted(text_of(h) for h in self._redis.smembers(HOSTS))
        return [host_info_of(host_id, self._redis.get(heartbeat_key(host_id))) for host_id in ids]

    def _wait(self, job_id: str, timeout_s: float, done: Callable[[JobInfo], bool], what: str) -> JobInfo:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                info: JobInfo | None = self.show(job_id)
            except LookupError:
                info = None
            if info is not None and done(info):
                return info
            if time.monotonic() >= deadline:
                raise not_in_time(job_id, what, timeout_s, info)
            time.sleep(POLL_S)
