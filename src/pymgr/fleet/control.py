"""The host's control stream: signed stops for the jobs this host took, applied as a local stop is.

Rules:
- The stream ``fleet:ctl:<host>`` is read in the consumer group
  ``keyspace.GROUP`` by its own loop beside the job streams', so a host busy
  with ``max_jobs`` jobs still reads its stops. Its pending entries are read
  first (from id 0) at every turn: a stop read before a restart, or one
  waiting for its run to start, is taken up again.
- An entry is a control job (``jobs.py``): a known key's signature, signed
  for this host's control stream. A refused entry is counted among the
  audit's refusals (operation ``fleet.stop``), logged and acknowledged.
- A stop is not refused for its age: a host cut off for an hour applies the
  stops it missed when it is back. It stops only a run created before the
  stop was signed (give or take ``max_age_s`` of clock skew), so a stop
  replayed later finds nothing to stop (refused ``too_old``).
- The stop is ``tasks.stop`` of the job's run (keyed ``fleet:<job id>``)
  through the guarded dispatcher as ``fleet:<key id>``: the host's own
  policy must allow ``tasks.stop:<type>``; the audit records it or counts
  the refusal. The run's whole tree is stopped as a local stop does, and
  the runner that follows the run reports the job ``stopped``.
- An entry is acknowledged once applied, or once there is nothing to apply
  it to (an ended job, a job of another host, an action job: an action is
  one call, which cannot be stopped). A task job this host has taken whose
  run has not started yet keeps its stop pending until it has.
- An entry that fails to apply (a Redis error such as WRONGTYPE, or a bug)
  stays pending and the entries after it are applied all the same; it is
  tried again ``reconnect_max_s`` later, and after ``[fleet] max_deliveries``
  failures it is refused (reason ``failed``), audited and acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from redis.exceptions import ResponseError

from pymgr.auth.audit import Auditor
from pymgr.config import FleetConfig
from pymgr.core.dispatch import Call, CallHandler
from pymgr.errors import PymgrError
from pymgr.fleet import jobs
from pymgr.fleet.backoff import FIRST_BACKOFF_S, REDIS_DOWN
from pymgr.fleet.failures import EntryFailures
from pymgr.fleet.jobs import Job, JobRefused
from pymgr.fleet.keyspace import FINAL, GROUP, control_key, job_key
from pymgr.fleet.runner import identity_of, run_key
from pymgr.tasks.manager import TaskManager
from pymgr.tasks.records import TaskRecord

__all__ = ["FleetControl"]

log = logging.getLogger("pymgr.fleet")

#: Entries read from the control stream at a time.
READ_COUNT = 100
_FINAL_NAMES = frozenset(state.value.encode() for state in FINAL)


class FleetControl:
    """Reads this host's control stream and applies its stops.

    Args:
        config: the ``[fleet]`` settings.
        dispatcher: the guarded dispatcher every edge calls.
        tasks: the task manager (to find a job's run); None: no task runs here to stop.
        auditor: counts refused entries.
        keys: the public keys of ``[[fleet.keys]]`` by id.
        redis: the agent's ``redis.asyncio`` client.
    """

    def __init__(
        self,
        config: FleetConfig,
        dispatcher: CallHandler,
        tasks: TaskManager | None,
        auditor: Auditor | None,
        keys: Mapping[str, Ed25519PublicKey],
        redis: Any,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._dispatcher = dispatcher
        self._tasks = tasks
        self._auditor = auditor
        self._keys = keys
        self._redis = redis
        self._clock = clock
        self._stream = control_key(config.host_id)
        self._main: asyncio.Task[None] | None = None
        self._closing = False
        #: The entries that failed and are still pending, by id (bytes, as read).
        self._failures: EntryFailures[bytes] = EntryFailures(config.max_deliveries, config.reconnect_max_s)

    def start(self) -> None:
        """Start reading in the running event loop."""
        self._main = asyncio.create_task(self._serve(), name="pymgr-fleet-control")

    async def aclose(self) -> None:
        """Stop reading: stops not applied yet stay pending for the next start."""
        self._closing = True
        if self._main is not None:
            self._main.cancel()
            await asyncio.gather(self._main, return_exceptions=True)

    async def _serve(self) -> None:
        wait_s = FIRST_BACKOFF_S
        while not self._closing:
            try:
                await self._session()
            except (*REDIS_DOWN, ResponseError) as exc:  # ResponseError: NOGROUP, Redis restarted empty
                log.debug("fleet: the control stream waits for Redis (%s)", exc)
            except Exception:  # a bug: logged, and the loop starts over (the entry stays pending)
                log.exception("fleet: the control stream failed; this is a bug")
            await asyncio.sleep(wait_s)
            wait_s = min(wait_s * 2, self._config.reconnect_max_s)

    async def _session(self) -> None:
        try:
            await self._redis.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        block_ms = int(self._config.block_s * 1000)
        while not self._closing:
            await self._read("0", None)  # pending first: stops read before, or waiting for their run
            await self._read(">", block_ms)

    async def _read(self, after: str, block_ms: int | None) -> None:
        """Apply the entries after ``after`` (``>``: new ones; an id: this host's pending ones, page by page)."""
        while True:
            streams = {self._stream: after}
            reply = await self._redis.xreadgroup(
                GROUP, self._config.host_id, streams, count=READ_COUNT, block=block_ms
            )
            entries = reply[0][1] if reply else []
            for entry_id, fields in entries:
                await self._take_up(entry_id, fields)
                after = entry_id if after != ">" else after
            if after == ">" or len(entries) < READ_COUNT:
                return

    async def _take_up(self, entry_id: Any, fields: Any) -> None:
        """Apply one entry and acknowledge it once done with; one that keeps failing is given up.

        An error applying an entry (a Redis answer such as WRONGTYPE, or a bug) leaves it pending and
        the read goes on with the next one, so one bad entry never holds back the stops after it. It is
        tried again at a turn ``reconnect_max_s`` later at the soonest (an error of a failover passes);
        after ``max_deliveries`` failures it is refused, audited and acknowledged. Only a lost Redis
        ends the read (the session starts over).
        """
        if not self._failures.due(entry_id):
            return
        try:
            done = fields is None or await self._apply(fields)  # None: deleted (XDEL)
        except REDIS_DOWN:
            raise
        except Exception as exc:
            given_up = self._failures.failed(entry_id, f"{entry_id.decode()} of {self._stream}", exc)
            if given_up is not None:
                self._refuse("failed", given_up)
            done = given_up is not None
        if done:
            self._failures.forget(entry_id)
            await self._redis.xack(self._stream, GROUP, entry_id)

    async def _apply(self, fields: Any) -> bool:
        """Apply one stop; whether it is done with (acknowledge it) or waits for its run (keep it)."""
        try:
            stop = jobs.check(
                jobs.decode(fields), self._keys, stream=self._stream, now=self._clock(), max_age_s=math.inf
            )
        except JobRefused as exc:
            self._refuse(exc.reason, str(exc))
            return True
        job_id = str(stop.params["job"])
        record = self._run_of(job_id)
        if record is None:
            return not await self._may_start_here(job_id)
        if record.created_at.timestamp() > stop.submitted_at + self._config.max_age_s:
            self._refuse("too_old", f"stop {stop.id} was signed before run {record.id} of job {job_id} began")
            return True
        await self._stop(stop, job_id, record)
        return True

    async def _stop(self, stop: Job, job_id: str, record: TaskRecord) -> None:
        try:
            await self._dispatcher.call(Call("tasks", "stop", {"id": record.id}, identity_of(stop)))
        except PymgrError as exc:  # a refusal is counted by the dispatcher; the submitter sees why
            log.warning("fleet: stop %s of job %s not applied: %s", stop.id, job_id, exc)
            await self._redis.hset(job_key(job_id), mapping={"stop_error": str(exc)})
            return
        log.info("fleet: stop %s of job %s: run %d stopped", stop.id, job_id, record.id)

    async def _may_start_here(self, job_id: str) -> bool:
        """Whether a task job without a run yet is this host's and not ended: its run may start soon."""
        kind, state, host = await self._redis.hmget(job_key(job_id), "kind", "state", "received_by")
        waits = kind == b"task" and host == self._config.host_id.encode() and state not in _FINAL_NAMES
        if not waits:
            log.info("fleet: a stop for job %s finds nothing to stop here", job_id)
        return waits

    def _run_of(self, job_id: str) -> TaskRecord | None:
        if self._tasks is None:
            return None
        runs = self._tasks.list_runs(key=run_key(job_id), limit=1)
        return runs[0] if runs else None

    def _refuse(self, reason: str, message: str) -> None:
        log.warning("fleet: refused a stop in %s: %s", self._stream, message)
        if self._auditor is not None:
            self._auditor.refused(self._stream, "fleet", "fleet.stop", reason)
