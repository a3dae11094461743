"""The reaper's roster: which hosts of ``fleet:hosts`` are silent, since when, and forgetting them.

Rules:
- ``fleet:silent`` (a sorted set) holds each host of ``fleet:hosts`` that
  a reaper found without a heartbeat, scored by the time it first did (the
  reaper's clock; the heartbeat had run out then, so the host was silent at
  least that long). A host found alive again leaves it.
- A host silent for ``[fleet] forget_host_after_s`` is dropped from
  ``fleet:hosts`` (and ``fleet:silent``) once nothing is pending for it: its
  host stream has no pending entry and no entry queued after the last one
  delivered (the reaper marks those lost and deletes them first), and its
  control stream no stop it read and never applied. ``pymgr fleet hosts``
  then stops listing it, and no reaper visits it again.
- Its tags' streams are not looked at: an entry it left pending there is
  claimed by any live host with the tag, which goes by the pending entry's
  consumer, never by ``fleet:hosts``; forgetting the host changes nothing
  for it.
- One Lua script drops the host, and does nothing if its heartbeat is back
  or an entry was queued for it since the look (a host that comes back joins
  again at its next heartbeat anyway).
- A job queued for a forgotten host stays queued, as one for a host id that
  never sent a heartbeat: the submitter is told it was not taken.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import ResponseError

from pymgr.fleet.claims import text
from pymgr.fleet.keyspace import GROUP, HOSTS, SILENT, control_key, heartbeat_key

__all__ = ["Roster"]

log = logging.getLogger("pymgr.fleet")

# KEYS: fleet:hosts, fleet:silent, the host's heartbeat, its stream. ARGV: the host, the stream's last id
# as looked at ('' for none). 1: forgotten; 0: back, or something new queued for it.
FORGET_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local last = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
local last_id = ''
if last[1] then last_id = last[1][1] end
if last_id ~= ARGV[2] then return 0 end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


class Roster:
    """The hosts a reaper visits, and when it forgets one.

    Args:
        redis: the agent's ``redis.asyncio`` client.
        forget_after_s: ``[fleet] forget_host_after_s``.
    """

    def __init__(self, redis: Any, forget_after_s: float) -> None:
        self._redis = redis
        self._forget_after_s = forget_after_s
        self._forget = redis.register_script(FORGET_SCRIPT)

    async def silent_hosts(self, me: str) -> dict[str, float]:
        """The hosts of ``fleet:hosts`` (this one left out) without a heartbeat, and since when they are.

        A host newly silent is entered in ``fleet:silent`` now; one alive again leaves it.
        """
        since = {
            text(host): float(at) for host, at in await self._redis.zrange(SILENT, 0, -1, withscores=True)
        }
        silent = {}
        for host in sorted(text(raw) for raw in await self._redis.smembers(HOSTS)):
            alive = await self._redis.exists(heartbeat_key(host))
            if alive and host in since:
                await self._redis.zrem(SILENT, host)
            elif not alive and host != me:
                if host not in since:
                    since[host] = time.time()
                    await self._redis.zadd(SILENT, {host: since[host]}, nx=True)
                silent[host] = since[host]
        return silent

    async def forget_if_idle(self, host: str, silent_since: float) -> bool:
        """Drop ``host`` from ``fleet:hosts`` if it was silent long enough and nothing is pending for it."""
        if time.time() - silent_since < self._forget_after_s:
            return False
        stream = f"fleet:host:{host}"
        last_id = await self._idle_stream(stream)
        if last_id is None or not await self._no_pending(control_key(host)):
            return False
        args = [host, last_id]
        if await self._forget(keys=[HOSTS, SILENT, heartbeat_key(host), stream], args=args) != 1:
            return False
        log.info(
            "fleet: host %s was silent for %.0f s with nothing pending: forgotten",
            host,
            time.time() - silent_since,
        )
        return True

    async def _idle_stream(self, stream: str) -> str | None:
        """The last entry id of the host's stream ('' for none) if nothing there is pending or undelivered."""
        last = await self._redis.xrevrange(stream, "+", "-", count=1)
        if not last:
            return ""
        last_id = text(last[0][0])
        try:
            groups = await self._redis.xinfo_groups(stream)
        except ResponseError:  # no such key: made again since the look; the script sees it
            return last_id
        group = next((g for g in groups if text(g["name"]) == GROUP), None)
        if group is None:  # queued for it, never read: the reaper marks those lost and deletes them
            return None
        delivered = _id_of(text(group["last-delivered-id"]))
        if int(group["pending"]) > 0 or _id_of(last_id) > delivered:
            return None
        return last_id

    async def _no_pending(self, stream: str) -> bool:
        if not await self._redis.exists(stream):
            return True
        try:
            return int((await self._redis.xpending(stream, GROUP))["pending"]) == 0
        except ResponseError:  # NOGROUP: never read, so nothing read and not applied
            return True


def _id_of(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)
