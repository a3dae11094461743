"""Taking a job up (``received``) on a real Redis: a job whose hash is final already is not run again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
import redis.asyncio as aioredis

from pymgr.core.dispatch import Call
from pymgr.fleet.jobs import Job, Target
from pymgr.fleet.keyspace import FINAL, GROUP, job_key
from pymgr.fleet.runner import END_SCRIPT, JobRunner


class _Recorder:
    """The dispatcher of these tests: records each call (it must be made only for a job taken)."""

    registry: Any = None

    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def call(self, call: Call) -> Any:
        self.calls.append(call)
        return {"done": True}


async def _run_as(host: str, redis_url: str, job: Job, stream: str, entry: str) -> tuple[dict[str, str], int]:
    """Run ``job`` (entry ``entry`` of ``stream``) on ``host``: its final fields and how many calls were made."""
    dispatcher = _Recorder()
    async with aioredis.from_url(redis_url) as client:

        async def write(operation: Any) -> Any:
            return await operation(client)

        runner = JobRunner(
            host, dispatcher, None, write, poll_s=0.1, output_max_entries=10, output_chunk_bytes=1024
        )
        final = await runner.run(job, stream, entry)
    return final, len(dispatcher.calls)


def test_a_claimed_job_whose_old_host_wrote_its_end_before_the_take_is_acknowledged_not_run_again(
    redis_url: str,
) -> None:
    stream = "fleet:tag:t"
    with redis.Redis.from_url(redis_url) as client:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        for state in sorted(FINAL):
            job = Job(f"j-{state.value}", "action", "m.a", {}, Target("tag", "t"), time.time(), "k1")
            key = job_key(job.id)
            entry = client.xadd(stream, {"job": "x"}).decode()
            client.xreadgroup(GROUP, "a", {stream: ">"})
            client.hset(key, mapping={"state": "running", "received_by": "a"})
            # b claims the entry past a's lease; a's end lands before b takes the job up.
            client.xclaim(stream, GROUP, "b", 0, [entry])
            fields = ["state", state.value, "received_by", "a"]
            assert client.eval(END_SCRIPT, 2, key, stream, "a", GROUP, entry, *fields) == 1
            final, calls = asyncio.run(_run_as("b", redis_url, job, stream, entry))
            assert (final, calls) == ({"state": state.value}, 0)
            assert client.hgetall(key) == {b"state": state.value.encode(), b"received_by": b"a"}
            assert client.xpending_range(stream, GROUP, entry, entry, 1) == []
        # A job not final yet is taken and run.
        job = Job("j-open", "action", "m.a", {}, Target("tag", "t"), time.time(), "k1")
        entry = client.xadd(stream, {"job": "x"}).decode()
        client.xreadgroup(GROUP, "b", {stream: ">"})
        client.hset(job_key(job.id), mapping={"state": "queued"})
        final, calls = asyncio.run(_run_as("b", redis_url, job, stream, entry))
        assert (final["state"], calls) == ("succeeded", 1)
        assert client.hget(job_key(job.id), "received_by") == b"b"
        assert client.xpending(stream, GROUP)["pending"] == 0
