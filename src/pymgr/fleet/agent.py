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
- A heartbeat (``fleet:hb:<host>``, ``heartbeat.py``) beats while a session
  reads (groups made, ``XREADGROUP`` answered); a failed session stops it (a
  host that cannot read looks dead once it expires), except in a clean stop:
  then it beats until the last report (a long stop keeps the host's jobs).
- No more than ``max_jobs`` jobs are open at once: the agent reads none
  while that many are.
- Dead hosts (``reaper.py``, a task beside the heartbeat): entries of dead
  hosts on this host's tag streams are claimed and taken as if delivered;
  an entry re-read or claimed more than ``max_deliveries`` times goes to the
  dead-letter stream instead (unless its run is in this host's store).
- Stops come through the host's control stream, read by ``control.py``
  beside the job streams (never held back by ``max_jobs``).
- An entry whose taking up fails (a Redis answer such as ``WRONGTYPE``, or a
  bug) stays pending while the entries after it are taken up; it is tried
  again later and given up (dead-lettered) after ``max_deliveries``
  failures (``failures.py``).
- A clean stop comes in two steps around the task manager's: ``stop_reading``
  (no new job, no stop, the reaper lock let go) before the daemon stops its
  runs, ``aclose`` after. An action job still in its call is cut short,
  marked ``lost`` and acknowledged; a task job whose run has not started yet
  stays pending (its hash as it was, or ``received``) and is taken up at the
  next start. The jobs whose runs have ended report their end and are
  acknowledged, within ``stop_report_s``; a job whose run goes on (``[tasks]
  on_shutdown = "leave"``, or still stopping) stays pending and is followed
  again at the next start, as after ``kill -9``.
"""

from __future__ import annotations

import asyncio
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
from pymgr.fleet.failures import EntryFailures
from pymgr.fleet.jobs import Job, JobRefused
from pymgr.fleet.keys import load_public_key, read_secret_file
from pymgr.fleet.heartbeat import Heartbeat
from pymgr.fleet.keyspace import GROUP
from pymgr.fleet.marks import Marks
from pymgr.fleet.reaper import Reaper
from pymgr.fleet.replay import FILE_NAME, CallGuard, Claim, RecordError, RecordFull
from pymgr.fleet.runner import JobRunner
from pymgr.tasks.manager import TaskManager

__all__ = ["FleetAgent"]

log = logging.getLogger("pymgr.fleet")


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
        self._redis = _connect(config)
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
            take=lambda stream, entry_id, fields, n: self._take_up(stream, entry_id, fields, True, n),
            room=lambda: config.max_jobs - len(self._open),
        )
        #: The jobs running now, by (stream, entry id), and what each runs.
        self._open: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._jobs: dict[tuple[str, str], Job] = {}
        #: Entries that failed to be taken up, by (stream, entry id); their payload: their fields.
        self._failures: EntryFailures[tuple[str, str]] = EntryFailures(
            config.max_deliveries, config.reconnect_max_s
        )
        self._freed = asyncio.Event()
        #: Action jobs called here, across restarts.
        self._called = CallGuard(state_dir / FILE_NAME, max_entries=config.replay_max_entries, clock=clock)
        self._backoff_s = FIRST_BACKOFF_S
        self._main: asyncio.Task[None] | None = None
        #: While a session reads, and from ``stop_reading`` until ``aclose`` has written its last report.
        self._beat = Heartbeat(config, self._redis, lambda: len(self._open), clock)
        #: False once stopping: no more reads (jobs, stops, claims). ``_closing``: no more writes either.
        self._reading = True
        self._closing = False
        self._marks = Marks(self._redis, config.host_id, auditor)
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

    async def stop_reading(self) -> None:
        """The first step of a clean stop, before the runs are stopped: take no new job nor stop.

        An action job still in its call is cut short now, marked ``lost`` and acknowledged; a task job
        whose run has not started yet is let go (pending, its hash as it was or ``received``: taken up at
        the next start); the task jobs with a run go on, so that each reports the end its run gets from
        the daemon's shutdown (``aclose``). The heartbeat goes on too, until ``aclose`` has reported.
        """
        # The flag as well as the cancel: redis-py may turn a cancelled read into a connection error,
        # which the loops below take for Redis going away and would wait out forever.
        self._reading = False
        await self._control.aclose()
        if self._main is not None:
            self._main.cancel()
            await asyncio.gather(self._main, return_exceptions=True)
        await self._reaper.release()
        calls = {key: job for key, job in self._jobs.items() if job.kind == "action"}
        # The action jobs, and the task jobs whose run has not started (none to report the end of).
        let_go = [key for key, job in self._jobs.items() if not self._runner.accepted_before(job)]
        await self._cancel([self._open[key] for key in let_go])
        for (stream, entry_id), job in calls.items():
            await self._mark_cut_short(stream, entry_id, job)

    async def aclose(self) -> None:
        """The last step, once the runs were stopped: let the jobs report their end, then close.

        The jobs whose runs have ended get ``stop_report_s`` to report it; the others (a run left to the
        keeper, or still stopping) stay pending in Redis, followed again at the next start.
        """
        await self.stop_reading()
        await self._cancel(
            [self._open[key] for key, job in self._jobs.items() if not self._runner.run_ended(job)]
        )
        if self._open:
            await asyncio.wait(list(self._open.values()), timeout=self._config.stop_report_s)
        self._closing = True
        await self._cancel(list(self._open.values()))
        await self._beat.stop()
        await self._redis.aclose()
        self._called.close()

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

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
        while self._reading:
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
        reaper = asyncio.create_task(self._reaper.serve())
        try:
            await self._read_pending()
            while self._reading:
                await self._retry_failed()
                await self._read_new()
        finally:
            reaper.cancel()
            if self._reading:  # failed: a host that cannot read must look dead (not so once stopping)
                await self._beat.stop()

    async def _read_pending(self) -> None:
        """This host's entries read before but never acknowledged: from id 0, page by page."""
        after = {stream: "0" for stream in self._streams}
        while after:
            reply = await self._redis.xreadgroup(GROUP, self._config.host_id, after, count=100)
            self._beat.start()  # reading: the host can work
            for stream_name, entries in reply or []:
                stream = _text(stream_name)
                if not entries:
                    after.pop(stream, None)
                    continue
                for entry_id, fields in entries:
                    after[stream] = _text(entry_id)
                    await self._take_up(stream, _text(entry_id), fields, True)
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
                await self._take_up(_text(stream_name), _text(entry_id), fields, False)

    # --- one entry ---------------------------------------------------------

    async def _take_up(
        self, stream: str, entry_id: str, fields: Any, pending: bool, deliveries: int | None = None
    ) -> None:
        """Take one entry up; one that fails stays pending, tried again later, and is given up at last.

        Only a lost Redis ends the read (the session starts over): any other error is this entry's, and
        the entries after it are taken up all the same (``failures.py``).
        """
        key = (stream, entry_id)
        if not self._failures.due(key):
            return
        try:
            await self._take(stream, entry_id, fields, pending, deliveries)
        except REDIS_DOWN:
            raise
        except Exception as exc:
            given_up = self._failures.failed(key, f"{entry_id} of {stream}", exc, fields)
            if given_up is not None:
                await self._reaper.claims.dead_letter(stream, entry_id, fields, given_up)
                await self._marks.dead(fields, given_up)
            return
        self._failures.forget(key)

    async def _retry_failed(self) -> None:
        """Take up again the entries that failed, once their wait is over (they are still pending)."""
        for (stream, entry_id), fields in self._failures.due_now():
            await self._take_up(stream, entry_id, fields, True)

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
            await self._marks.refuse(stream, entry_id, exc)
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
        self._jobs[(stream, entry_id)] = job

    async def _run(self, stream: str, entry_id: str, job: Job) -> None:
        started = time.monotonic()
        try:
            final = await self._runner.run(job, stream, entry_id)
            elapsed = time.monotonic() - started
            log.info("%6.2fs fleet job %s %s:%s -> %s", elapsed, job.id, job.kind, job.type, final["state"])
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: the entry stays pending and is taken up again at the next start
            log.exception("fleet job %s failed in the agent; this is a bug", job.id)
        finally:
            self._open.pop((stream, entry_id), None)
            self._jobs.pop((stream, entry_id), None)
            self._called.ended(job.id)
            self._freed.set()

    async def _first_call(self, stream: str, entry_id: str, job: Job) -> bool:
        """Record an action job before its call; False (the entry refused or acknowledged) if it must not run."""
        try:
            claim = await self._called.claim(job.id, job.submitted_at + self._config.max_age_s)
        except RecordError as exc:  # full, or not writable: refused rather than risk a second call
            reason = "replay-record-full" if isinstance(exc, RecordFull) else "replay-record-error"
            await self._marks.refuse(stream, entry_id, JobRefused(reason, str(exc), job.id))
            return False
        if claim is Claim.FIRST:
            return True
        log.info("fleet: action job %s was called here already; acknowledged again, not called", job.id)
        if claim is Claim.CALLED:  # a final state stays; a call cut short by a crash or a stop is lost
            await self._marks.lost_call(job.id)
        await self._redis.xack(stream, GROUP, entry_id)
        return False

    async def _mark_cut_short(self, stream: str, entry_id: str, job: Job) -> None:
        """At a clean stop: an action job cancelled in its call is ``lost`` now, not at the next start."""
        try:
            async with asyncio.timeout(self._config.stop_report_s):
                await self._marks.lost_call(job.id)
                await self._redis.xack(stream, GROUP, entry_id)
        except (TimeoutError, RedisError, OSError) as exc:  # it stays pending: marked at the next start
            log.warning("fleet: action job %s cut short by the stop is not marked yet (%s)", job.id, exc)


def _connect(config: FleetConfig) -> Any:
    """The agent's Redis client (no connection yet).

    Raises:
        FleetKeyError: the password file cannot be used.
    """
    password = None if config.password_file is None else read_secret_file(config.password_file)
    # Any: redis-py types each command's reply as the union of its sync and async forms.
    return aioredis.from_url(
        config.redis_url,
        username=config.username,
        password=password,
        socket_connect_timeout=config.block_s + 1,
        socket_timeout=config.block_s + 5,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
