"""The fleet agent: this daemon's member of the fleet, a task in its event loop (started when ``[fleet]`` is set).

Rules:
- It reads its host stream and one stream per tag in the consumer group
  ``keyspace.GROUP``, its host id as consumer (``XREADGROUP``): a tag's job
  goes to exactly one host with the tag.
- Every entry is decoded and checked (``jobs.py``: a known key's signature,
  for the stream it came from, not older than ``max_age_s``). A refused entry
  is counted among the audit's refusals, logged, marked ``refused`` in its
  job's hash when the id can be read, and acknowledged: it will never pass.
- An accepted job runs through ``runner.py`` (the local policy and audit,
  the task key that keeps it from running twice). An action job's id goes
  into ``replay.py``'s record before its call: one found there is
  acknowledged and not called again (marked ``lost`` if its call was cut
  short by a crash or a stop and its hash has no final state). An entry is
  acknowledged (``XACK``) only after its final state is written; until then
  it stays in the pending-entries list.
- When Redis goes away the agent waits (0.1 s, doubling up to
  ``reconnect_max_s``) and starts over: it makes the groups again if Redis
  lost them, re-reads its own pending entries from id 0 and takes up each
  one that is not already running here. A pending task job whose run is in
  the task store is followed whatever its age (it was accepted before); a
  fresh entry must be younger than ``max_age_s``.
- Reports into Redis (``write``) retry the same way, so a run that ends
  while Redis is down is reported when it is back.
- A heartbeat key (``fleet:hb:<host>``: tags, running jobs, time) lives
  ``lease_s`` and is refreshed every third of it.
- No more than ``max_jobs`` jobs are open at once: the agent reads none
  while that many are.
- Dead hosts (``reaper.py``, a task beside the heartbeat): entries of dead
  hosts on this host's tag streams are claimed and taken as if delivered;
  an entry re-read or claimed more than ``max_deliveries`` times goes to the
  dead-letter stream instead (unless its run is in this host's store).
- Stops come through the host's control stream, read by ``control.py``
  beside the job streams (never held back by ``max_jobs``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from pymgr.auth.audit import Auditor
from pymgr.config import FleetConfig
from pymgr.core.dispatch import CallHandler
from pymgr.fleet import jobs
from pymgr.fleet.backoff import FIRST_BACKOFF_S, REDIS_DOWN
from pymgr.fleet.control import FleetControl
from pymgr.fleet.jobs import Job, JobRefused
from pymgr.fleet.keys import load_public_key, read_secret_file
from pymgr.fleet.keyspace import FINAL, GROUP, HOSTS, JobState, heartbeat_key, job_key
from pymgr.fleet.reaper import Reaper
from pymgr.fleet.replay import FILE_NAME, CallGuard, Claim, RecordError, RecordFull
from pymgr.fleet.runner import JobRunner
from pymgr.tasks.manager import TaskManager

__all__ = ["FleetAgent"]

log = logging.getLogger("pymgr.fleet")

# Mark a job refused (the fields after the empty ARGV), unless its state is one of the final ones before it.
REFUSE_SCRIPT = """
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
#: Seconds between two warnings of a failing heartbeat: one a minute says it goes on without filling the log.
HEARTBEAT_WARN_EVERY_S = 60.0


class FleetAgent:
    """Takes this host's fleet jobs from Redis and runs them through the daemon.

    Raises (at construction):
        FleetKeyError: a key or the password file cannot be used.
        RecordError: the record of action jobs (in ``state_dir``) cannot be opened.
    """

    def __init__(
        self,
        config: FleetConfig,
        dispatcher: CallHandler,
        tasks: TaskManager | None,
        auditor: Auditor | None,
        *,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._keys = {key.id: load_public_key(key.key_file) for key in config.keys}
        password = None if config.password_file is None else read_secret_file(config.password_file)
        # Any: redis-py types each command's reply as the union of its sync and async forms.
        self._redis: Any = aioredis.from_url(
            config.redis_url,
            username=config.username,
            password=password,
            socket_connect_timeout=config.block_s + 1,
            socket_timeout=config.block_s + 5,
        )
        self._auditor = auditor
        self._clock = clock
        self._streams = [f"fleet:host:{config.host_id}", *(f"fleet:tag:{tag}" for tag in config.tags)]
        self._runner = JobRunner(
            config.host_id,
            dispatcher,
            tasks,
            self.write,
            poll_s=config.poll_s,
            output_max_entries=config.output_max_entries,
            output_chunk_bytes=config.output_chunk_bytes,
        )
        self._reaper = Reaper(
            config,
            self._redis,
            self._keys,
            take=lambda stream, entry_id, fields, n: self._take(stream, entry_id, fields, True, n),
            room=lambda: config.max_jobs - len(self._open),
        )
        #: The jobs running now, by (stream, entry id).
        self._open: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._freed = asyncio.Event()
        #: Action jobs called here, across restarts.
        self._called = CallGuard(state_dir / FILE_NAME, max_entries=config.replay_max_entries, clock=clock)
        self._backoff_s = FIRST_BACKOFF_S
        self._main: asyncio.Task[None] | None = None
        self._closing = False
        self._refuse_script = self._redis.register_script(REFUSE_SCRIPT)
        self._control = FleetControl(config, dispatcher, tasks, auditor, self._keys, self._redis, clock=clock)

    def start(self) -> None:
        """Start serving in the running event loop."""
        self._main = asyncio.create_task(self._serve(), name="pymgr-fleet")
        self._control.start()
        log.info(
            "fleet: host %s, tags %s, redis %s",
            self._config.host_id,
            self._config.tags,
            self._config.redis_url,
        )

    async def aclose(self) -> None:
        """Stop reading and following: unacknowledged jobs stay pending in Redis for the next start."""
        # The flag as well as the cancel: redis-py may turn a cancelled read into a connection error,
        # which the loops below take for Redis going away and would wait out forever.
        self._closing = True
        await self._control.aclose()
        pending = [task for task in (self._main, *self._open.values()) if task is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._reaper.release()
        await self._redis.aclose()
        self._called.close()

    async def write(self, operation: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run one Redis operation until Redis takes it, waiting between attempts as reconnecting does; its reply."""
        wait_s = FIRST_BACKOFF_S
        while True:
            if self._closing:  # unwritten: the entry stays pending, and is taken up at the next start
                raise asyncio.CancelledError
            try:
                return await operation(self._redis)
            except REDIS_DOWN as exc:
                log.debug("fleet: a report waits for Redis (%s)", exc)
                await asyncio.sleep(wait_s)
                wait_s = min(wait_s * 2, self._config.reconnect_max_s)

    # --- the read loop -----------------------------------------------------

    async def _serve(self) -> None:
        while not self._closing:
            try:
                await self._session()
            except REDIS_DOWN as exc:
                self._retry_later(f"Redis is unreachable ({exc})")
            except ResponseError as exc:  # NOGROUP: Redis restarted without its data
                self._retry_later(f"Redis answered {exc}")
            await asyncio.sleep(self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, self._config.reconnect_max_s)

    def _retry_later(self, why: str) -> None:
        log.warning("fleet: %s; trying again in %.1f s", why, self._backoff_s)

    async def _session(self) -> None:
        for stream in self._streams:
            try:
                await self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._backoff_s = FIRST_BACKOFF_S
        beside = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._reaper.serve())]
        try:
            await self._read_pending()
            while not self._closing:
                await self._read_new()
        finally:
            for task in beside:
                task.cancel()

    async def _read_pending(self) -> None:
        """This host's entries read before but never acknowledged: from id 0, page by page."""
        after = {stream: "0" for stream in self._streams}
        while after:
            reply = await self._redis.xreadgroup(GROUP, self._config.host_id, after, count=100)
            for stream_name, entries in reply or []:
                stream = _text(stream_name)
                if not entries:
                    after.pop(stream, None)
                    continue
                for entry_id, fields in entries:
                    after[stream] = _text(entry_id)
                    await self._take(stream, _text(entry_id), fields, True)
            if not reply:
                return

    async def _read_new(self) -> None:
        while len(self._open) >= self._config.max_jobs:
            self._freed.clear()
            await self._freed.wait()
        room = self._config.max_jobs - len(self._open)
        block_ms = int(self._config.block_s * 1000)
        streams = {stream: ">" for stream in self._streams}
        reply = await self._redis.xreadgroup(GROUP, self._config.host_id, streams, count=room, block=block_ms)
        for stream_name, entries in reply or []:
            for entry_id, fields in entries:
                await self._take(_text(stream_name), _text(entry_id), fields, False)

    # --- one entry ---------------------------------------------------------

    async def _take(
        self, stream: str, entry_id: str, fields: Any, pending: bool, deliveries: int | None = None
    ) -> None:
        """Check and start one entry; ``pending``: read before (re-read or claimed), ``deliveries`` counted."""
        if (stream, entry_id) in self._open or fields is None:  # running already; or deleted (XDEL)
            if fields is None:
                await self._redis.xack(stream, GROUP, entry_id)
            return
        try:
            signed = jobs.decode(fields)
            accepted = pending and self._runner.accepted_before(signed.job)
            max_age_s = math.inf if accepted else self._config.max_age_s
            job = jobs.check(signed, self._keys, stream=stream, now=self._clock(), max_age_s=max_age_s)
        except JobRefused as exc:
            await self._refuse(stream, entry_id, exc)
            return
        if (
            pending
            and not accepted
            and await self._reaper.claims.given_up(stream, entry_id, fields, job.id, deliveries)
        ):
            return
        if job.kind == "action" and not await self._first_call(stream, entry_id, job):
            return
        task = asyncio.create_task(self._run(stream, entry_id, job), name=f"pymgr-fleet-job-{job.id}")
        self._open[(stream, entry_id)] = task

    async def _run(self, stream: str, entry_id: str, job: Job) -> None:
        started = time.monotonic()
        try:
            final = await self._runner.run(job)
            await self.write(lambda r: r.xack(stream, GROUP, entry_id))
            elapsed = time.monotonic() - started
            log.info("%6.2fs fleet job %s %s:%s -> %s", elapsed, job.id, job.kind, job.type, final["state"])
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: the entry stays pending and is taken up again at the next start
            log.exception("fleet job %s failed in the agent; this is a bug", job.id)
        finally:
            self._open.pop((stream, entry_id), None)
            self._called.ended(job.id)
            self._freed.set()

    async def _first_call(self, stream: str, entry_id: str, job: Job) -> bool:
        """Record an action job before its call; False (the entry refused or acknowledged) if it must not run."""
        try:
            claim = await self._called.claim(job.id, job.submitted_at + self._config.max_age_s)
        except RecordError as exc:  # full, or not writable: refused rather than risk a second call
            reason = "replay-record-full" if isinstance(exc, RecordFull) else "replay-record-error"
            await self._refuse(stream, entry_id, JobRefused(reason, str(exc), job.id))
            return False
        if claim is Claim.FIRST:
            return True
        log.info("fleet: action job %s was called here already; acknowledged again, not called", job.id)
        if claim is Claim.CALLED:  # a final state stays; a call cut short by a crash or a stop is lost
            # The host is the hash's received_by already; ended_at as the reaper writes it for a lost job.
            fields = ["state", JobState.LOST.value, "error", CUT_SHORT, "ended_at", f"{time.time():.3f}"]
            await self._refuse_script(keys=[job_key(job.id)], args=[*FINAL_NAMES, "", *fields])
        await self._redis.xack(stream, GROUP, entry_id)
        return False

    async def _refuse(self, stream: str, entry_id: str, exc: JobRefused) -> None:
        log.warning("fleet: refused entry %s of %s: %s", entry_id, stream, exc)
        if self._auditor is not None:
            self._auditor.refused(stream, "fleet", "fleet.job", exc.reason)
        if exc.job_id is not None:  # a job already ended (cancelled while queued, lost) keeps its state
            fields = ["state", JobState.REFUSED.value, "error", str(exc), "refused_by", self._config.host_id]
            await self._refuse_script(keys=[job_key(exc.job_id)], args=[*FINAL_NAMES, "", *fields])
        await self._redis.xack(stream, GROUP, entry_id)

    async def _heartbeat(self) -> None:
        """Refresh ``fleet:hb:<host>`` every third of ``lease_s`` whatever Redis answers, until cancelled.

        Any Redis error (unreachable, WRONGTYPE, OOM, READONLY after a failover) is logged and the next beat
        tries again: a heartbeat that stopped would make this live host look dead, and its tagged jobs
        would be claimed and run again elsewhere while it still runs them. The host joins ``fleet:hosts``
        once per session (the agent's read loop starts a new one after Redis went away), apart from the
        beat so that a failing ``SADD`` does not stop the ``SET``.
        """
        ttl_s = max(1, math.ceil(self._config.lease_s))
        joined = False
        warned_at = -math.inf
        while True:
            beat = {"host": self._config.host_id, "tags": self._config.tags, "running": len(self._open)}
            beat["at"] = round(self._clock(), 3)
            failure = None
            try:
                await self._redis.set(heartbeat_key(self._config.host_id), json.dumps(beat), ex=ttl_s)
            except (RedisError, OSError) as exc:
                failure = f"the heartbeat was not written ({exc})"
            if not joined:
                try:
                    await self._redis.sadd(HOSTS, self._config.host_id)
                    joined = True
                except (RedisError, OSError) as exc:
                    failure = failure or f"the host is not in {HOSTS} ({exc})"
            if failure is not None and time.monotonic() - warned_at >= HEARTBEAT_WARN_EVERY_S:
                warned_at = time.monotonic()
                log.warning("fleet: %s; trying again every %.1f s", failure, self._config.lease_s / 3)
            await asyncio.sleep(self._config.lease_s / 3)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
