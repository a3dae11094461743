"""Dead hosts: every round, each host claims its tags' orphans; the one reaper marks pinned jobs lost.

Rules:
- A host is dead when its heartbeat key (``fleet:hb:<host>``, TTL
  ``lease_s``) is gone. A round runs every ``reap_interval_s`` (a third of
  ``lease_s`` by default) on every host: it renews or takes the reaper lock,
  claims on this host's tag streams (``claims.py``), and, if this host holds
  the lock, reaps the streams of dead hosts. A host with ``[fleet] reaper =
  false`` never takes the lock (its Redis user may not reach other hosts'
  streams: ``acl.py``); one whose user may not take it says so once, and
  still claims.
- The reaper lock is ``fleet:reaper``: the holder's host id with a TTL of
  ``lease_s``. One Lua script renews it if this host holds it, takes it if
  nobody does, and else leaves it; so exactly one live daemon reaps, and when
  it dies another takes over within ``lease_s`` plus a round. A daemon that
  stops cleanly lets it go at once (``release``).
- Reaping a dead host's stream (``fleet:host:<id>``, for every id in
  ``fleet:hosts``): an entry pending there past ``lease_s`` is marked
  ``lost`` in its job's hash and acknowledged; an entry never delivered and
  queued more than ``lease_s`` ago is marked ``lost`` and deleted (``XDEL``),
  so the host, if it comes back, does not run a job its submitter was told
  was lost. Only entries whose signature verifies are marked (what a host
  would have refused is left to it); a job whose hash is final already
  (written before the host died) is only acknowledged. One Lua script
  checks and writes each, and does nothing if the host's heartbeat is back.
- A tag's jobs are never lost: they wait for any host with the tag.
- A dead host silent for ``forget_host_after_s`` with nothing pending is
  dropped from ``fleet:hosts`` after its round (``roster.py``).
- Redis errors end the round (a dead host's stream Redis refuses to read
  ends only that host's part); the next round tries again (the read loop
  does the reconnecting).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from pymgr.config import FleetConfig
from pymgr.fleet import jobs
from pymgr.fleet.claims import FINAL_STATES, PAGE, Claims, Take, pending_pages, text
from pymgr.fleet.jobs import Job, JobRefused
from pymgr.fleet.keyspace import GROUP, REAPER, JobState, heartbeat_key, job_key
from pymgr.fleet.roster import Roster

__all__ = ["Reaper"]

log = logging.getLogger("pymgr.fleet")

# KEYS: the lock. ARGV: this host, the TTL in ms. 1: held (renewed or taken), 0: another host holds it.
LOCK_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] or not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: the job's hash, its stream, the host's heartbeat.
# ARGV: entry id, group, 'ack' or 'del', error, at, reaper, the state "lost", the final states.
# -1: the host is back (nothing done); 0: the job had ended (acknowledged only); 1: marked lost.
LOST_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local state = redis.call('HGET', KEYS[1], 'state')
local ended = false
for i = 8, #ARGV do
  if state == ARGV[i] then ended = true end
end
if not ended then
  redis.call('HSET', KEYS[1], 'state', ARGV[7], 'error', ARGV[4], 'ended_at', ARGV[5], 'reaped_by', ARGV[6])
end
if ARGV[3] == 'ack' then redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
else redis.call('XDEL', KEYS[2], ARGV[1]) end
if ended then return 0 end
return 1
"""


class Reaper:
    """This host's share of looking after dead hosts: its claims each round, the reaping when it holds the lock.

    Args:
        config: ``[fleet]`` (``host_id``, ``tags``, ``lease_s``, ``reap_every_s``, ``reaper``).
        redis: the agent's ``redis.asyncio`` client.
        keys: the public keys of ``[[fleet.keys]]`` by id (a job is marked lost only if its signature verifies).
        take, room: what ``Claims`` runs a claimed entry with, and how many more jobs this host may open.
    """

    def __init__(
        self,
        config: FleetConfig,
        redis: Any,
        keys: Mapping[str, Ed25519PublicKey],
        *,
        take: Take,
        room: Callable[[], int],
    ) -> None:
        self._config = config
        self._redis = redis
        self._keys = keys
        self._lease_ms = math.ceil(config.lease_s * 1000)
        self.claims = Claims(
            redis,
            config.host_id,
            lease_ms=self._lease_ms,
            max_deliveries=config.max_deliveries,
            dead_max_entries=config.dead_max_entries,
            take=take,
            room=room,
        )
        self._tag_streams = [f"fleet:tag:{tag}" for tag in config.tags]
        self._lock = redis.register_script(LOCK_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)
        self._lost = redis.register_script(LOST_SCRIPT)
        self._roster = Roster(redis, config.forget_host_after_s)
        self.holder = False
        self._refused = False

    async def serve(self) -> None:
        """Run a round every ``reap_every_s`` until cancelled."""
        while True:
            try:
                await self.round()
            except (RedisError, OSError) as exc:
                log.debug("fleet: the reaper's round ended early (%s)", exc)
            except Exception:  # a bug: log it, and look after dead hosts again next round
                log.exception("fleet: the reaper's round failed; this is a bug")
            await asyncio.sleep(self._config.reap_every_s)

    async def round(self) -> None:
        """Renew or take the lock, claim on this host's tags, and reap if this host holds the lock."""
        holder = await self._hold()
        if holder != self.holder:
            log.info("fleet: this host %s the reaper", "is now" if holder else "is no longer")
            self.holder = holder
        for stream in self._tag_streams:
            await self.claims.claim(stream)
        if holder:
            for host, silent_since in (await self._roster.silent_hosts(self._config.host_id)).items():
                try:
                    await self._reap(host)
                except ResponseError as exc:  # e.g. NOGROUP: a stream Redis lost and a submitter made again
                    log.debug("fleet: the stream of dead host %s cannot be reaped (%s)", host, exc)
                    continue
                await self._roster.forget_if_idle(host, silent_since)

    async def _hold(self) -> bool:
        """Renew or take the reaper lock: whether this host holds it (never with ``[fleet] reaper = false``)."""
        if not self._config.reaper:
            return False
        try:
            return bool(await self._lock(keys=[REAPER], args=[self._config.host_id, self._lease_ms]))
        except NoPermissionError as exc:
            if not self._refused:
                log.warning(
                    "fleet: this host's Redis user may not take the reaper lock (%s): grant it "
                    "(pymgr fleet acl --reapers) or set [fleet] reaper = false; it still claims its tags' jobs",
                    exc,
                )
                self._refused = True
            return False

    async def release(self) -> None:
        """Let the lock go if this host holds it (a clean stop), so another host reaps without waiting."""
        if self.holder:
            self.holder = False
            try:
                await self._release(keys=[REAPER], args=[self._config.host_id])
            except (RedisError, OSError) as exc:  # the lock runs out by itself within lease_s
                log.debug("fleet: the reaper lock could not be let go (%s)", exc)

    async def _reap(self, host: str) -> None:
        """Mark lost what dead ``host`` held past the lease, and what was queued for it and never read."""
        stream = f"fleet:host:{host}"
        if not await self._redis.exists(stream):
            return
        async for pending in pending_pages(self._redis, stream, self._lease_ms):
            for entry in pending:
                entry_id = text(entry["message_id"])
                found = await self._redis.xrange(stream, entry_id, entry_id)
                reason = f"host {host} stopped sending heartbeats and its lease ({self._config.lease_s:g} s) ran out"
                await self._mark(host, stream, entry_id, found[0][1] if found else None, "ack", reason)
        start = "(" + await self._last_delivered(stream)
        queued_before = f"{int(time.time() * 1000) - self._lease_ms}"
        while True:
            page = await self._redis.xrange(stream, start, queued_before, count=PAGE)
            for raw_id, fields in page:
                reason = f"host {host} had no heartbeat for {self._config.lease_s:g} s; the job was never delivered"
                await self._mark(host, stream, text(raw_id), fields, "del", reason)
            if len(page) < PAGE:
                return
            start = "(" + text(page[-1][0])

    async def _mark(self, host: str, stream: str, entry_id: str, fields: Any, how: str, reason: str) -> None:
        job = self._verified(stream, fields)
        if job is None:
            if how == "ack":  # deleted, or not a job (a host acknowledges what it refuses): nothing to mark
                await self._redis.xack(stream, GROUP, entry_id)
            return
        now = f"{time.time():.3f}"
        head = [entry_id, GROUP, how, reason, now, self._config.host_id, JobState.LOST.value]
        keys = [job_key(job.id), stream, heartbeat_key(host)]
        if await self._lost(keys=keys, args=[*head, *FINAL_STATES]) == 1:
            log.warning("fleet: job %s (entry %s of %s) is lost: %s", job.id, entry_id, stream, reason)

    def _verified(self, stream: str, fields: Any) -> Job | None:
        if fields is None:
            return None
        try:
            return jobs.check(
                jobs.decode(fields), self._keys, stream=stream, now=time.time(), max_age_s=math.inf
            )
        except JobRefused:
            return None

    async def _last_delivered(self, stream: str) -> str:
        """The last entry id the group delivered from ``stream`` ("0-0" when it never read one)."""
        for group in await self._redis.xinfo_groups(stream):
            if text(group["name"]) == GROUP:
                return text(group["last-delivered-id"])
        return "0-0"
