"""``AsyncFleetClient``: ``FleetClient`` for an asyncio program (a console's web back end).

The same jobs, checks and results as the sync client (``api.py`` holds the
constructor, the scripts and the signed entries; ``results.py`` the readers);
only the I/O differs, through ``redis.asyncio``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

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

__all__ = ["AsyncFleetClient"]

#: What a dropped or restarting Redis raises while following; the follow waits and goes on.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)


class AsyncFleetClient(FleetApi):
    """Submit jobs to a fleet, stop them and read their state (asyncio); as ``FleetClient``."""

    def _connect(self, redis_url: str, **options: Any) -> Any:
        return aioredis.from_url(redis_url, **options)

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def __aenter__(self) -> AsyncFleetClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def submit(
        self,
        type: str,
        params: Mapping[str, Any] | None = None,
        *,
        host: str | None = None,
        tag: str | None = None,
        key: str | None = None,
        kind: Literal["task", "action"] = "task",
    ) -> str:
        """``FleetClient.submit``."""
        job_id, keys, args = self._submission(type, params, host, tag, key, kind)
        await self._submit_script(keys=keys, args=args)
        return job_id

    async def stop(self, job_id: str) -> StopResult:
        """``FleetClient.stop``."""
        state = await self._cancel_script(keys=[job_key(job_id)], args=[now_text()])
        result = self._stop_before_sending(job_id, state)
        if result is not None:
            return result
        result, stream, entry = self._stop_entry(await self.show(job_id))
        if stream is not None:
            await self._redis.xadd(stream, entry)
        return result

    async def show(self, job_id: str) -> JobInfo:
        """``FleetClient.show``."""
        return job_info_of(job_id, await self._redis.hgetall(job_key(job_id)))

    async def jobs(
        self, *, state: str | None = None, host: str | None = None, tag: str | None = None, limit: int = 50
    ) -> list[JobInfo]:
        """``FleetClient.jobs``."""
        check_list_filters(state, limit)
        found: list[JobInfo] = []
        for start in range(0, await self._redis.zcard(JOBS), LIST_PAGE):
            ids = [text_of(i) for i in await self._redis.zrevrange(JOBS, start, start + LIST_PAGE - 1)]
            pipe = self._redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(job_key(job_id))
            for job_id, raw in zip(ids, await pipe.execute(), strict=True):
                if raw and matches(info := job_info_of(job_id, raw), state, host, tag):
                    found.append(info)
                    if len(found) == limit:
                        return found
        return found

    async def wait_received(self, job_id: str, timeout_s: float = 30.0) -> JobInfo:
        """``FleetClient.wait_received``."""
        return await self._wait(job_id, timeout_s, taken, "taken")

    async def wait(self, job_id: str, timeout_s: float = 300.0) -> JobInfo:
        """``FleetClient.wait``."""
        return await self._wait(job_id, timeout_s, ended, "ended")

    async def output(self, job_id: str) -> bytes:
        """``FleetClient.output``."""
        return b"".join(fields[b"data"] for _, fields in await self._redis.xrange(output_key(job_id)))

    async def follow(
        self,
        job_id: str,
        after: str = "0",
        *,
        block_s: float = 0.5,
        on_reconnect: Callable[[str, Exception], None] | None = None,
    ) -> AsyncIterator[OutputChunk]:
        """``FleetClient.follow``."""
        await self.show(job_id)
        last, ended_seen = after, False
        while True:
            block = None if ended_seen else int(block_s * 1000)
            try:
                reply = await self._redis.xread({output_key(job_id): last}, count=100, block=block)
                if not reply:
                    if ended_seen:
                        return
                    ended_seen = await self._ended(job_id)
                    continue
            except REDIS_DOWN as exc:
                if on_reconnect is not None:
                    on_reconnect(last, exc)
                await asyncio.sleep(block_s)
                continue
            for entry_id, fields in reply[0][1]:
                chunk = chunk_of(entry_id, fields)
                yield chunk
                last = chunk.entry_id

    async def _ended(self, job_id: str) -> bool:
        try:
            return (await self.show(job_id)).final
        except LookupError:
            return False

    async def hosts(self) -> list[HostInfo]:
        """``FleetClient.hosts``."""
        ids = sorted(text_of(h) for h in await self._redis.smembers(HOSTS))
        return [host_info_of(host_id, await self._redis.get(heartbeat_key(host_id))) for host_id in ids]

    async def _wait(
        self, job_id: str, timeout_s: float, done: Callable[[JobInfo], bool], what: str
    ) -> JobInfo:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                info: JobInfo | None = await self.show(job_id)
            except LookupError:
                info = None
            if info is not None and done(info):
                return info
            if time.monotonic() >= deadline:
                raise not_in_time(job_id, what, timeout_s, info)
            await asyncio.sleep(POLL_S)
