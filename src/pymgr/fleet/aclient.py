"""``AsyncFleetClient``: ``FleetClient`` for an asyncio program (a console's web back end).

The same requests, checks and results as the sync client (``api.py`` holds the
constructor, the scripts and the signed entries; ``steps.py`` each request's
steps; ``results.py`` the readers); only the I/O differs, through ``redis.asyncio``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis

from pymgr.fleet import steps
from pymgr.fleet.api import FleetApi
from pymgr.fleet.results import HostInfo, JobInfo, OutputChunk, StopResult, ended, taken
from pymgr.fleet.steps import REDIS_DOWN, Clock, Emit, Op, Sleep, Stepper, Steps

__all__ = ["AsyncFleetClient"]

T = TypeVar("T")


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

    async def _run(self, request: Steps[T]) -> T:
        """As ``FleetClient._run``."""
        stepper = Stepper(request)
        async for chunk in self._drive(stepper):
            raise RuntimeError(f"a request with a result emitted output (entry {chunk.entry_id})")
        return stepper.result

    async def _drive(self, stepper: Stepper[Any]) -> AsyncIterator[OutputChunk]:
        """As ``FleetClient._drive``, awaiting each op."""
        op = stepper.send(None)
        while op is not None:
            if isinstance(op, Emit):
                yield op.chunk
                op = stepper.send(None)
                continue
            try:
                reply = await self._io(op)
            except REDIS_DOWN as exc:
                op = stepper.throw(exc)
            else:
                op = stepper.send(reply)

    async def _io(self, op: Op) -> Any:
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)
            return None
        if isinstance(op, Clock):
            return time.monotonic()
        assert not isinstance(op, Emit)  # _drive hands chunks to the caller
        return await self._send(op)

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
        return await self._run(self._submit_steps(type, params, host, tag, key, kind))

    async def stop(self, job_id: str) -> StopResult:
        """``FleetClient.stop``."""
        return await self._run(self._stop_steps(job_id))

    async def show(self, job_id: str) -> JobInfo:
        """``FleetClient.show``."""
        return await self._run(steps.show(job_id))

    async def jobs(
        self, *, state: str | None = None, host: str | None = None, tag: str | None = None, limit: int = 50
    ) -> list[JobInfo]:
        """``FleetClient.jobs``."""
        return await self._run(steps.jobs(state, host, tag, limit))

    async def wait_received(self, job_id: str, timeout_s: float = 30.0) -> JobInfo:
        """``FleetClient.wait_received``."""
        return await self._run(steps.wait(job_id, timeout_s, taken, "taken"))

    async def wait(self, job_id: str, timeout_s: float = 300.0) -> JobInfo:
        """``FleetClient.wait``."""
        return await self._run(steps.wait(job_id, timeout_s, ended, "ended"))

    async def output(self, job_id: str) -> bytes:
        """``FleetClient.output``."""
        return await self._run(steps.output(job_id))

    def follow(
        self,
        job_id: str,
        after: str = "0",
        *,
        block_s: float = 0.5,
        on_reconnect: Callable[[str, Exception], None] | None = None,
    ) -> AsyncIterator[OutputChunk]:
        """``FleetClient.follow``: ``async for chunk in fleet.follow(job_id)``."""
        return self._drive(Stepper(steps.follow(job_id, after, block_s, on_reconnect)))

    async def hosts(self) -> list[HostInfo]:
        """``FleetClient.hosts``."""
        return await self._run(steps.hosts())
