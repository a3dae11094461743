"""Taking over a dead host's tagged jobs, and giving up on jobs delivered too often (the dead letters).

Rules:
- Every live host claims for itself, on each stream of its tags, the
  pending entries whose consumer is a host **without a heartbeat** and that
  were delivered more than ``lease_s`` ago (``XPENDING ... IDLE``, then
  ``XCLAIM`` with that min-idle time, which checks the idle time again in
  Redis: of two hosts claiming at once, one gets each entry). Why not
  ``XAUTOCLAIM``: it claims every entry idle that long whatever its
  consumer, and a live host's long job is idle from its delivery on. Why not
  renew the idle time of a live host's running entries (``XCLAIM`` to
  itself) instead: a host cut off and taken over would, on coming back,
  claim its entries back from the host that took them. The heartbeat already
  says whether a host lives; ``lease_s`` of idle time says the entry has not
  just been delivered (a host that restarts re-reads its pending entries,
  which makes them fresh again).
- A claimed entry runs as if newly delivered (``take``), through the same
  checks as any; the task key keeps it from running twice on one host. A job
  the dead host had started runs again here: delivery is at least once.
- A claimed entry whose hash already has a final state (the host wrote it
  and died before ``XACK``) is acknowledged, not run again.
- An entry delivered more than ``max_deliveries`` times (Redis counts each
  read, re-read and claim) goes to the dead-letter stream instead of running:
  the job and why, ``XADD MAXLEN ~ dead_max_entries``; its hash says ``dead``;
  the entry is acknowledged. One Lua script does the three. A task job whose
  run is already in this host's store is exempt: following it is not a new
  delivery of the work (the agent checks that first).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pymgr.fleet import jobs
from pymgr.fleet.jobs import JobRefused
from pymgr.fleet.keyspace import DEAD, FINAL, GROUP, JobState, heartbeat_key, job_key

__all__ = ["Claims", "Take", "pending_pages", "text"]

log = logging.getLogger("pymgr.fleet")

#: Runs a claimed entry (stream, entry id, fields, deliveries counted by Redis with this one).
Take = Callable[[str, str, Any, int], Awaitable[None]]
#: Pending entries read per ``XPENDING`` page.
PAGE = 100
#: The final states, as the scripts compare them.
FINAL_STATES = [state.value for state in FINAL]

# KEYS: the job stream, the dead-letter stream, the job's hash.
# ARGV: entry id, group, maxlen, job, sig, error, deliveries, host, at, the state "dead", the final states.
# A job whose hash is final already (its host wrote it and died before XACK) is only acknowledged.
DEAD_SCRIPT = """
local state = redis.call('HGET', KEYS[3], 'state')
for i = 11, #ARGV do
  if state == ARGV[i] then redis.call('XACK', KEYS[1], ARGV[2], ARGV[1]) return 0 end
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'job', ARGV[4], 'sig', ARGV[5], 'stream', KEYS[1],
  'entry', ARGV[1], 'error', ARGV[6], 'deliveries', ARGV[7], 'host', ARGV[8], 'at', ARGV[9])
redis.call('HSET', KEYS[3], 'state', ARGV[10], 'error', ARGV[6], 'deliveries', ARGV[7],
  'reaped_by', ARGV[8], 'ended_at', ARGV[9])
redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
return 1
"""
# KEYS: the job stream, the dead-letter stream. ARGV: entry id, group, maxlen, job, sig, error, host, at.
# An entry that failed to be taken up: it goes to the dead letters without touching its hash (which may
# be what fails: WRONGTYPE), and is acknowledged.
FAILED_SCRIPT = """
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'job', ARGV[4], 'sig', ARGV[5], 'stream', KEYS[1],
  'entry', ARGV[1], 'error', ARGV[6], 'host', ARGV[7], 'at', ARGV[8])
redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
"""


class Claims:
    """This host's claims on its tags' streams, and the dead-letter check of every entry it takes.

    Args:
        redis: the agent's ``redis.asyncio`` client.
        host_id: this host (the consumer it claims for).
        lease_ms: ``lease_s`` in milliseconds: the idle time an entry needs before it can be claimed.
        max_deliveries, dead_max_entries: the ``[fleet]`` settings.
        take: runs a claimed entry as the agent runs a delivered one.
        room: how many more jobs this host may open now (``max_jobs`` less the open ones).
    """

    def __init__(
        self,
        redis: Any,
        host_id: str,
        *,
        lease_ms: int,
        max_deliveries: int,
        dead_max_entries: int,
        take: Take,
        room: Callable[[], int],
    ) -> None:
        self._redis = redis
        self._host_id = host_id
        self._lease_ms = lease_ms
        self._max_deliveries = max_deliveries
        self._dead_max_entries = dead_max_entries
        self._take = take
        self._room = room
        self._dead_script = redis.register_script(DEAD_SCRIPT)
        self._failed_script = redis.register_script(FAILED_SCRIPT)

    async def claim(self, stream: str) -> None:
        """Claim and take up the entries of ``stream`` that dead hosts held past the lease, as room allows."""
        room = self._room()
        if room <= 0:
            return
        chosen: list[dict[str, Any]] = []
        async for pending in pending_pages(self._redis, stream, self._lease_ms):
            owners = {text(entry["consumer"]) for entry in pending} - {self._host_id}
            dead = {owner for owner in owners if not await self._redis.exists(heartbeat_key(owner))}
            chosen += [entry for entry in pending if text(entry["consumer"]) in dead]
            if len(chosen) >= room:
                break
        if not chosen:
            return
        held = {text(entry["message_id"]): entry for entry in chosen[:room]}
        claimed = await self._redis.xclaim(stream, GROUP, self._host_id, self._lease_ms, list(held))
        for raw_id, fields in claimed:
            entry_id = text(raw_id)
            entry = held[entry_id]
            deliveries = int(entry["times_delivered"]) + 1
            log.warning(
                "fleet: claimed entry %s of %s from %s (no heartbeat, idle %.1f s; delivery %d)",
                entry_id,
                stream,
                text(entry["consumer"]),
                int(entry["time_since_delivered"]) / 1000,
                deliveries,
            )
            if await self._ended(fields):
                await self._redis.xack(stream, GROUP, entry_id)
                continue
            await self._take(stream, entry_id, fields, deliveries)

    async def given_up(
        self, stream: str, entry_id: str, fields: Any, job_id: str, deliveries: int | None
    ) -> bool:
        """Whether the entry was delivered too often: if so it is on the dead-letter stream now, acknowledged.

        Args:
            deliveries: Redis's count with this delivery; None: read it from the pending-entries list.
        """
        if deliveries is None:
            pending = await self._redis.xpending_range(stream, GROUP, entry_id, entry_id, 1)
            deliveries = int(pending[0]["times_delivered"]) if pending else 0
        if deliveries <= self._max_deliveries:
            return False
        error = (
            f"delivered {deliveries} times without an end, more than max_deliveries ({self._max_deliveries}):"
            f" given up by {self._host_id}"
        )
        entry = {text(name): value for name, value in fields.items()}
        head = [entry_id, GROUP, self._dead_max_entries, entry["job"], entry["sig"], error, deliveries]
        args = [*head, self._host_id, f"{time.time():.3f}", JobState.DEAD.value, *FINAL_STATES]
        keys = [stream, DEAD, job_key(job_id)]
        if await self._dead_script(keys=keys, args=args):
            log.warning("fleet: job %s (entry %s of %s) is dead: %s", job_id, entry_id, stream, error)
        return True

    async def dead_letter(self, stream: str, entry_id: str, fields: Any, error: str) -> None:
        """Give up an entry that kept failing to be taken up: onto the dead-letter stream, acknowledged.

        Its hash is left to the caller (it may be what fails: ``Marks.dead`` tries).
        """
        entry = {text(name): value for name, value in (fields or {}).items()}
        head = [entry_id, GROUP, self._dead_max_entries, entry.get("job", ""), entry.get("sig", "")]
        await self._failed_script(
            keys=[stream, DEAD], args=[*head, error, self._host_id, f"{time.time():.3f}"]
        )
        log.warning("fleet: entry %s of %s is on %s: %s", entry_id, stream, DEAD, error)

    async def _ended(self, fields: Any) -> bool:
        """Whether the entry's job already has a final state (read from the entry's unchecked id)."""
        try:
            job_id = jobs.decode(fields).job.id
        except JobRefused:  # taking it refuses it, as any malformed entry
            return False
        return text(await self._redis.hget(job_key(job_id), "state") or b"") in FINAL_STATES


async def pending_pages(redis: Any, stream: str, idle_ms: int) -> Any:
    """The pending entries of ``stream`` idle at least ``idle_ms``, page by page (``XPENDING`` dicts)."""
    start = "-"
    while True:
        page = await redis.xpending_range(stream, GROUP, start, "+", PAGE, idle=idle_ms)
        if page:
            yield page
        if len(page) < PAGE:
            return
        start = "(" + text(page[-1]["message_id"])


def text(value: Any) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
