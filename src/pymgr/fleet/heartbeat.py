"""The host's heartbeat: ``fleet:hb:<host>`` (JSON: tags, running jobs, time), living ``lease_s``.

Rules:
- It is refreshed every third of ``lease_s`` whatever Redis answers: any
  Redis error (unreachable, WRONGTYPE, OOM, READONLY after a failover) is
  logged, once a minute at most, and the next beat tries again. A heartbeat
  that stopped would make this live host look dead, and its tagged jobs
  would be claimed and run again elsewhere while it still runs them.
- The host joins ``fleet:hosts`` at every beat too: a reaper drops a host
  silent for ``forget_host_after_s`` (``roster.py``), and one that was
  paused or cut off that long must be listed again when it is back. The
  ``SADD`` is apart from the ``SET``, so that a failing one does not stop it.
- It beats only while the host can work (``Heartbeat``, started and stopped
  by the agent): a host whose reads keep failing must look dead, so that
  its tagged jobs are claimed elsewhere and its pinned jobs marked lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from pymgr.config import FleetConfig
from pymgr.fleet.keyspace import HOSTS, heartbeat_key

__all__ = ["Heartbeat", "heartbeat"]

log = logging.getLogger("pymgr.fleet")

#: Seconds between two warnings of a failing heartbeat: one a minute says it goes on without filling the log.
HEARTBEAT_WARN_EVERY_S = 60.0


async def heartbeat(
    config: FleetConfig, redis: Any, running: Callable[[], int], clock: Callable[[], float]
) -> None:
    """Beat until cancelled.

    Args:
        config: ``[fleet]`` (``host_id``, ``tags``, ``lease_s``).
        redis: the agent's ``redis.asyncio`` client.
        running: how many jobs this host runs now.
        clock: the time written as ``at``.
    """
    ttl_s = max(1, math.ceil(config.lease_s))
    warned_at = -math.inf
    while True:
        beat = {"host": config.host_id, "tags": config.tags, "running": running(), "at": round(clock(), 3)}
        failure = None
        try:
            await redis.set(heartbeat_key(config.host_id), json.dumps(beat), ex=ttl_s)
        except (RedisError, OSError) as exc:
            failure = f"the heartbeat was not written ({exc})"
        try:
            await redis.sadd(HOSTS, config.host_id)
        except (RedisError, OSError) as exc:
            failure = failure or f"the host is not in {HOSTS} ({exc})"
        if failure is not None and time.monotonic() - warned_at >= HEARTBEAT_WARN_EVERY_S:
            warned_at = time.monotonic()
            log.warning("fleet: %s; trying again every %.1f s", failure, config.lease_s / 3)
        await asyncio.sleep(config.lease_s / 3)


class Heartbeat:
    """The heartbeat as a task that starts and stops: ``heartbeat``'s arguments."""

    def __init__(
        self, config: FleetConfig, redis: Any, running: Callable[[], int], clock: Callable[[], float]
    ) -> None:
        self._args = (config, redis, running, clock)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Beat from now on (at once), unless it beats already."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(heartbeat(*self._args), name="pymgr-fleet-heartbeat")

    async def stop(self) -> None:
        """Beat no more; the key is left to expire after ``lease_s``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
