"""``AsyncFleetClient``: ``FleetClient`` for an asyncio program (a console's web back end).

The same job, checks and results as the sync client (``client.py``: the
submission, the readers of hashes and heartbeats and the wait conditions are
shared); only the I/O differs, through ``redis.asyncio``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pymgr.fleet.client import (
    SUBMIT_SCRIPT,
    POLL_S,
    HostInfo,
    JobInfo,
    text_of,
    ended,
    host_info_of,
    job_info_of,
    not_in_time,
    submission,
    taken,
)
from pymgr.fleet.keyspace import HOSTS, heartbeat_key, job_key, output_key

__all__ = ["AsyncFleetClient"]


class AsyncFleetClient:
    """Submit jobs to a fleet and read their state (asyncio); arguments and errors as ``FleetClient``'s."""

    def __init__(
        self,
        redis_url: str,
        *,
        key_id: str | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        # Any: redis-py types each command's reply as the union of its sync and async forms.
        self._redis: Any = aioredis.from_url(redis_url, username=username, password=password)
        self._key_id = key_id
        self._signing_key = signing_key
        self._submit_script = self._redis.register_script(SUBMIT_SCRIPT)

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
        job_id, keys, args = submission(type, params, host, tag, key, kind, self._key_id, self._signing_key)
        await self._submit_script(keys=keys, args=args)
        return job_id

    async def show(self, job_id: str) -> JobInfo:
        """``FleetClient.show``."""
        return job_info_of(job_id, await self._redis.hgetall(job_key(job_id)))

    async def wait_received(self, job_id: str, timeout_s: float = 30.0) -> JobInfo:
        """``FleetClient.wait_received``."""
        return await self._wait(job_id, timeout_s, taken, "taken")

    async def wait(self, job_id: str, timeout_s: float = 300.0) -> JobInfo:
        """``FleetClient.wait``."""
        return await self._wait(job_id, timeout_s, ended, "ended")

    async def output(self, job_id: str) -> bytes:
        """``FleetClient.output``."""
        return b"".join(fields[b"data"] for _, fields in await self._redis.xrange(output_key(job_id)))

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
