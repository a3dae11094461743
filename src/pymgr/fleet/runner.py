"""One accepted fleet job, run on this host as any caller's call would be, and reported into Redis.

Rules:
- A job is a call through the daemon's guarded dispatcher, the same one
  every edge uses, as the identity ``fleet:<key id>``: the local policy
  decides, the audit records (or counts the refusal). A ``task`` job is
  ``tasks.start`` of its type; an ``action`` job is its ``module.action``.
- A task job's run is keyed ``fleet:<job id>``. Before starting, the runner
  looks for a run with that key in the task store: if one exists (running or
  ended), the job was already accepted here, and the runner follows that run
  instead of starting another. So a redelivered job never runs twice on one
  host, even across a daemon restart (as long as the record is kept).
- A job stopped while it was queued is ``cancelled`` in its hash: the runner
  takes it (``received``) in one script that checks for any final state
  first (``marks.py``), so a cancelled job never runs, a job taken is never
  cancelled, and a claimed job whose old host wrote its end between the
  claim and the take is acknowledged, not run again.
- The hash gets ``received`` before anything runs, ``running`` with the run's
  id and ``running_at``, progress while it runs, and the final state with the exit
  (``exit_code``, ``signal``, ``cancel_source``: ``shutdown`` for a run the host's own stop ended);
  the output goes into the job's capped stream as the run writes it.
- The final state and the entry's acknowledgement go in one script, each
  only if the job is still this host's: the entry is acknowledged only when
  this host's consumer still holds it (``XPENDING`` on its id); the hash is
  written only then, or when its ``received_by`` is still this host (or the
  hash was lost with Redis's data). A host that ran past its lease (paused,
  cut off) never writes over nor acknowledges the job another host claimed
  and took meanwhile; a ``received_by`` rewritten by hand (any host may
  write a job's hash) does not keep the host holding the entry from
  reporting.
- Every Redis write goes through ``write``, which retries until Redis takes
  it (the agent's ``write``): a Redis restart delays a report, never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pymgr.core.dispatch import Call, CallHandler
from pymgr.core.identity import Identity
from pymgr.errors import Forbidden, ParamsInvalid, PymgrError
from pymgr.fleet.jobs import Job
from pymgr.fleet.keyspace import GROUP, JobState, job_key, output_key
from pymgr.fleet.marks import FINAL_NAMES, MARK_SCRIPT
from pymgr.tasks.manager import TaskManager
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.startchecks import FLEET_KEY_PREFIX
from pymgr.tasks.states import TERMINAL, TaskState

__all__ = ["JobRunner", "Report", "run_key"]

log = logging.getLogger("pymgr.fleet")

#: A report to Redis: called with a client, retried by the agent until it succeeds; its reply.
Report = Callable[[Callable[[Any], Awaitable[Any]]], Awaitable[Any]]

# The final report (KEYS: the job's hash, its stream; ARGV: host, group, entry id, then the fields),
# only while the job is still this host's (the rules above; pcall: a Redis that lost the group has
# nothing to acknowledge). Returns 1 if the fields were written, + 2 if the entry was acknowledged.
END_SCRIPT = """
local pending = redis.pcall('XPENDING', KEYS[2], ARGV[2], ARGV[3], ARGV[3], 1)
local held = type(pending) == 'table' and not pending.err and pending[1] and pending[1][2] == ARGV[1]
local by = redis.call('HGET', KEYS[1], 'received_by')
local done = 0
if held or not by or by == ARGV[1] then
  redis.call('HSET', KEYS[1], unpack(ARGV, 4))
  done = 1
end
if held then
  redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
  done = done + 2
end
return done
"""

#: A task run's end state, as the job's state.
_FINAL_OF_RUN = {
    TaskState.SUCCEEDED: JobState.SUCCEEDED,
    TaskState.STOPPED: JobState.STOPPED,
}


def run_key(job_id: str) -> str:
    """The task key of a job's run on a host."""
    return f"{FLEET_KEY_PREFIX}{job_id}"


def identity_of(job: Job) -> Identity:
    """Who a job calls as: its key, named ``fleet:<key id>`` by the policy."""
    peer = (
        f"fleet job {job.id}"
        if job.kind != "control"
        else f"fleet {job.type} {job.id} of job {job.params['job']}"
    )
    return Identity(transport="fleet", fleet_key=job.key_id, peer=peer)


class JobRunner:
    """Runs jobs on this daemon and reports them through ``write``.

    Args:
        host_id: this host (``received_by``).
        dispatcher: the guarded dispatcher every edge calls.
        tasks: the task manager (to find and follow a job's run).
        write: runs one Redis operation until it succeeds (the agent's retrying writer).
        poll_s, output_max_entries, output_chunk_bytes: the ``[fleet]`` settings.
    """

    def __init__(
        self,
        host_id: str,
        dispatcher: CallHandler,
        tasks: TaskManager | None,
        write: Report,
        *,
        poll_s: float,
        output_max_entries: int,
        output_chunk_bytes: int,
    ) -> None:
        self._host_id = host_id
        self._dispatcher = dispatcher
        self._tasks = tasks
        self._write = write
        self._poll_s = poll_s
        self._max_entries = output_max_entries
        self._chunk_bytes = output_chunk_bytes

    def accepted_before(self, job: Job) -> bool:
        """Whether this host already took ``job`` (a task job whose run is in the store)."""
        return job.kind == "task" and self._existing_run(job) is not None

    def run_ended(self, job: Job) -> bool:
        """Whether ``job``'s run is in the store and has ended (its follower is about to report it)."""
        record = self._existing_run(job)
        return record is not None and record.state in TERMINAL

    async def run(self, job: Job, stream: str, entry_id: str) -> dict[str, str]:
        """Run ``job`` (entry ``entry_id`` of ``stream``) to its end, report it and acknowledge the entry.

        Returns the final fields (not written if the job was another host's by then: logged).
        """
        fields = ("state", JobState.RECEIVED.value, "received_by", self._host_id, "received_at", _now())
        key = job_key(job.id)
        take = [*FINAL_NAMES, "", *fields]
        if not await self._write(lambda r: r.eval(MARK_SCRIPT, 1, key, *take)):  # final: cancelled, ended
            await self._write(lambda r: r.xack(stream, GROUP, entry_id))
            state = await self._write(lambda r: r.hget(key, "state"))
            return {"state": state.decode() if isinstance(state, bytes) else str(state)}
        try:
            if job.kind == "task":
                final = await self._run_task(job)
            else:
                final = await self._run_action(job)
        except PymgrError as exc:
            state = JobState.REFUSED if isinstance(exc, Forbidden) else JobState.FAILED
            final = {"state": state.value, "error": str(exc), "code": exc.code}
        # The final write names the host (and the run) again: alone it tells the whole outcome, even
        # when Redis lost what came before it (a restart without persistence).
        final.update(received_by=self._host_id, ended_at=_now())
        args = [self._host_id, GROUP, entry_id, *(item for pair in final.items() for item in pair)]
        done = await self._write(lambda r: r.register_script(END_SCRIPT)(keys=[key, stream], args=args))
        if not done & 1:
            log.warning(
                "fleet job %s was taken by another host meanwhile: its end here is not written", job.id
            )
        return final

    async def _run_action(self, job: Job) -> dict[str, str]:
        module, action = job.type.split(".", 1)
        await self._set(job, state=JobState.RUNNING.value, running_at=_now())
        result = await self._dispatcher.call(Call(module, action, dict(job.params), identity_of(job)))
        return {"state": JobState.SUCCEEDED.value, "result": json.dumps(result, default=str)}

    async def _run_task(self, job: Job) -> dict[str, str]:
        tasks = self._tasks
        if tasks is None:
            raise ParamsInvalid("this daemon runs no task manager; a task job cannot run here")
        record = self._existing_run(job)
        if record is None:
            params = {"type": job.type, "params": dict(job.params), "key": run_key(job.id)}
            started = await self._dispatcher.call(Call("tasks", "start", params, identity_of(job)))
            record = tasks.get(int(started["id"]))
        await self._set(job, state=JobState.RUNNING.value, running_at=_now(), task_id=str(record.id))
        record = await self._follow(job, tasks, record)
        final = {
            "state": _FINAL_OF_RUN.get(record.state, JobState.FAILED).value,
            "task_state": record.state.value,
            "task_id": str(record.id),
            "exit_code": "" if record.exit_code is None else str(record.exit_code),
        }
        if record.signal:
            final["signal"] = record.signal
        if record.cancel_source:
            final["cancel_source"] = record.cancel_source
        if record.cancel_source == "shutdown":
            final["error"] = f"host {self._host_id} shut down and stopped run {record.id}"
        if record.error:
            final["error"] = record.error
        return final

    async def _follow(self, job: Job, tasks: TaskManager, record: TaskRecord) -> TaskRecord:
        """Copy the run's output and progress into Redis until it ends; its final record."""
        offset, progress = 0, None
        while True:
            running = tasks.running(record.id)
            offset = await self._copy_output(job, tasks, record.id, offset)
            record = tasks.get(record.id)
            if record.progress is not None and record.progress != progress:
                progress = record.progress
                await self._set(job, progress=str(progress), progress_message=record.progress_message or "")
            if not running:
                return record
            # Woken by the run's end, so a short run is reported at once rather than at the next look.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tasks.wait(record.id), self._poll_s)

    async def _copy_output(self, job: Job, tasks: TaskManager, task_id: int, offset: int) -> int:
        while True:
            try:
                data, _ = tasks.logs.read(task_id, offset, self._chunk_bytes)
            except ParamsInvalid:  # rotated away meanwhile: go on from what the log still holds
                offset = tasks.logs.span(task_id).start
                continue
            if not data:
                return offset
            fields = {"offset": str(offset), "data": data}
            key, cap = output_key(job.id), self._max_entries
            await self._write(lambda r: r.xadd(key, fields, maxlen=cap, approximate=True))
            offset += len(data)

    def _existing_run(self, job: Job) -> TaskRecord | None:
        if self._tasks is None:
            return None
        runs = self._tasks.list_runs(key=run_key(job.id), limit=1)
        return runs[0] if runs else None

    async def _set(self, job: Job, **fields: str) -> None:
        key = job_key(job.id)
        await self._write(lambda r: r.hset(key, mapping=fields))


def _now() -> str:
    return f"{time.time():.3f}"
