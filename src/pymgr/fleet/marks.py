"""What a host writes into a job's hash when it does not run the job: ``refused``, ``dead``, or ``lost``.

Rules:
- A mark never overwrites a final state: a job that ended (cancelled while
  queued, lost, succeeded) keeps it. One Lua script reads the state and
  writes the mark.
- A refused entry is logged, counted among the audit's refusals and
  acknowledged: it can never pass later.
- An entry given up after failing ``max_deliveries`` times is ``dead``, if
  its hash can be written (it may be the hash that failed).
- An action job whose call was cut short (a crash, or a stop during it) is
  ``lost``: its outcome is unknown, and it is not called again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import RedisError

from pymgr.auth.audit import Auditor
from pymgr.fleet import jobs
from pymgr.fleet.jobs import JobRefused
from pymgr.fleet.keyspace import FINAL, GROUP, JobState, job_key

__all__ = ["CUT_SHORT", "FINAL_NAMES", "MARK_SCRIPT", "Marks"]

log = logging.getLogger("pymgr.fleet")

# Mark a job (the fields after the empty ARGV), unless its state is one of the final ones before it.
MARK_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
local i = 1
while ARGV[i] ~= '' do
  if ARGV[i] == state then return 0 end
  i = i + 1
end
redis.call('HSET', KEYS[1], unpack(ARGV, i + 1))
return 1
"""
FINAL_NAMES = sorted(state.value for state in FINAL)
#: The error of an action job found in the record, not running here, with no final state.
CUT_SHORT = (
    "the daemon stopped after it took this action job (during its call, or just before it); its outcome "
    "is unknown, and it is not called again (an action job is called at most once per host)"
)


class Marks:
    """The marks this host writes.

    Args:
        redis: the agent's ``redis.asyncio`` client.
        host_id: this host (``refused_by``).
        auditor: counts refused entries.
    """

    def __init__(self, redis: Any, host_id: str, auditor: Auditor | None) -> None:
        self._redis = redis
        self._host_id = host_id
        self._auditor = auditor
        self._script = redis.register_script(MARK_SCRIPT)

    async def refuse(self, stream: str, entry_id: str, exc: JobRefused) -> None:
        """Refuse an entry: logged, audited, its job marked ``refused`` (when its id can be read), acknowledged."""
        log.warning("fleet: refused entry %s of %s: %s", entry_id, stream, exc)
        if self._auditor is not None:
            self._auditor.refused(stream, "fleet", "fleet.job", exc.reason)
        if exc.job_id is not None:
            await self._mark(
                exc.job_id, "state", JobState.REFUSED.value, "error", str(exc), "refused_by", self._host_id
            )
        await self._redis.xack(stream, GROUP, entry_id)

    async def lost_call(self, job_id: str) -> None:
        """Mark an action job whose call was cut short ``lost`` (it is not acknowledged here)."""
        # The host is the hash's received_by already; ended_at as the reaper writes it for a lost job.
        await self._mark(
            job_id, "state", JobState.LOST.value, "error", CUT_SHORT, "ended_at", f"{time.time():.3f}"
        )

    async def dead(self, fields: Any, error: str) -> None:
        """Mark the job of an entry given up ``dead``, if its id can be read and its hash written (it may be
        the hash that failed: then it is left as it is)."""
        try:
            job_id = jobs.decode(fields).job.id
            await self._mark(job_id, "state", JobState.DEAD.value, "error", error, "reaped_by", self._host_id)
        except (JobRefused, RedisError, AttributeError) as exc:  # AttributeError: no fields at all
            log.info("fleet: a job given up is not marked dead (%s)", exc)

    async def _mark(self, job_id: str, *fields: str) -> None:
        await self._script(keys=[job_key(job_id)], args=[*FINAL_NAMES, "", *fields])
