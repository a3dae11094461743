"""What ``FleetClient`` and ``AsyncFleetClient`` share: the constructor, the Lua scripts, signed entries.

Rules:
- A job or a stop is checked before it leaves by the decoder hosts use
  (``jobs.decode`` of its own entry): one a host would refuse as malformed is
  a ``ValueError`` here.
- ``submit`` is idempotent by ``key``: the key is the job's id, and a submit
  whose id already has a hash queues nothing and returns the id. The hash,
  the stream entry and the index entry (``fleet:jobs``) are written by one
  Lua script, so a job is never queued without its hash.
- A stop first tries to cancel the job in its hash (one script: only while
  it is ``queued``, which a host changes, in its own script, when it takes
  the job); if a host has taken it, the stop is signed for that host and
  added to its control stream.
- The two clients differ in their I/O only: ``_connect``, and the loop that
  drives a request's steps (``steps.py``; ``_submit_steps`` and
  ``_stop_steps`` here, as they sign). Each public method is a one-line call
  of that loop, written once per client: Python cannot type one method that
  is both sync and async (the daemon's clients do the same, ``client/api.py``).
"""

from __future__ import annotations

import abc
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pymgr.fleet import jobs, steps
from pymgr.fleet.jobs import Job, JobRefused, Target
from pymgr.fleet.keyspace import JOBS, JobState, job_key
from pymgr.fleet.results import JobInfo, StopResult, text_of
from pymgr.fleet.steps import MAX_LIST, Command, Pipeline, Script, Steps

__all__ = ["DEFAULT_INDEX_MAX_JOBS", "MAX_LIST", "FleetApi"]

#: Jobs the index ``fleet:jobs`` keeps (the newest); ``pymgr fleet list`` sees these. About 1 MB of
#: Redis memory for the index itself; the jobs' hashes are the submitter's to expire or delete.
DEFAULT_INDEX_MAX_JOBS = 10_000
#: The name of a client's Redis connections (``CLIENT LIST``), to tell them from the hosts'.
CLIENT_NAME = "pymgr-fleet-client"

# The job's hash, its stream entry and its index entry in one step, unless the id is taken.
# ARGV: job, sig, job id, the index's score (the submit time), index cap, then the hash's fields and values.
SUBMIT_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('XADD', KEYS[2], '*', 'job', ARGV[1], 'sig', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[5]) + 1))
return 1
"""

# Cancel a job no host has taken yet; the state the job is in either way (nil: no such job).
CANCEL_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'ended_at', ARGV[1])
  return 'cancelled'
end
return state
"""


class FleetApi(abc.ABC):
    """The state both fleet clients hold; each adds its I/O.

    Args:
        redis_url: ``unix:///path/redis.sock``, ``redis://host:6379/0`` or ``rediss://...``.
        key_id: the id of the signing key, as hosts know it (``[[fleet.keys]] id``); needed to submit
            and to stop.
        signing_key: the Ed25519 private key (``keys.load_private_key``); needed to submit and to stop.
        username, password: the Redis ACL user.
        index_max_jobs: how many of the newest jobs the index ``fleet:jobs`` keeps when this client
            submits (``jobs`` lists those).

    Raises:
        ValueError: ``index_max_jobs`` below 1.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        key_id: str | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        username: str | None = None,
        password: str | None = None,
        index_max_jobs: int = DEFAULT_INDEX_MAX_JOBS,
    ) -> None:
        if index_max_jobs < 1:
            raise ValueError(f"index_max_jobs must be at least 1, not {index_max_jobs!r}")
        # Any: redis-py types each command's reply as the union of its sync and async forms.
        self._redis: Any = self._connect(
            redis_url, username=username, password=password, client_name=CLIENT_NAME
        )
        self._key_id = key_id
        self._signing_key = signing_key
        self._index_max_jobs = index_max_jobs
        #: The scripts a ``steps.Script`` names, registered on this client's Redis connection.
        self._scripts: dict[str, Any] = {
            "submit": self._redis.register_script(SUBMIT_SCRIPT),
            "cancel": self._redis.register_script(CANCEL_SCRIPT),
        }

    @abc.abstractmethod
    def _connect(self, redis_url: str, **options: Any) -> Any:
        """The redis-py client (sync or asyncio) of this client's I/O."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key_id={self._key_id!r})"

    def _send(self, op: Command | Pipeline | Script) -> Any:
        """Sends ``op`` through this client's redis-py client: its reply (sync), or an awaitable of it."""
        if isinstance(op, Script):
            return self._scripts[op.name](keys=op.keys, args=op.args)
        if isinstance(op, Pipeline):
            pipe = self._redis.pipeline(transaction=False)
            for command in op.commands:  # queued, not sent: no await on either client
                getattr(pipe, command.name)(*command.args, **command.kwargs)
            return pipe.execute()
        return getattr(self._redis, op.name)(*op.args, **op.kwargs)

    def _signed(self, job: Job) -> dict[str, bytes]:
        signing_key = self._signing_key_or_error()
        try:
            entry = jobs.encode(job, signing_key.sign)
            jobs.decode(entry)
        except (JobRefused, ValueError) as exc:
            raise ValueError(f"this job would be refused: {exc}") from None
        return entry

    def _submit_steps(
        self,
        type: str,
        params: Mapping[str, Any] | None,
        host: str | None,
        tag: str | None,
        key: str | None,
        kind: Literal["task", "action"],
    ) -> Steps[str]:
        """``submit``: the signed job, written by the submit script (its keys and args); the job's id.

        Raises:
            ValueError: as ``FleetClient.submit`` says (before the script is sent).
        """
        if (host is None) == (tag is None):
            raise ValueError(
                "a job goes to one host (host=ID) or one host with a tag (tag=TAG): give exactly one"
            )
        target = Target("host", host) if host is not None else Target("tag", tag or "")
        job_id = key or uuid.uuid4().hex
        # The index's score is the time unrounded: jobs submitted within one millisecond stay in order.
        now = time.time()
        job = Job(job_id, kind, type, dict(params or {}), target, round(now, 3), self._key_id or "")
        entry = self._signed(job)
        fields = {"state": JobState.QUEUED.value, "kind": kind, "type": type, "target": str(target)}
        fields["submitted_at"] = str(job.submitted_at)
        args: list[Any] = [entry["job"], entry["sig"], job_id, repr(now), self._index_max_jobs]
        args += [x for pair in fields.items() for x in pair]
        yield Script("submit", [job_key(job_id), target.stream, JOBS], args)
        return job_id

    def _stop_steps(self, job_id: str) -> Steps[StopResult]:
        """``stop``: cancel the job in its hash, else add a signed stop to its host's control stream."""
        steps.check_job_id(job_id)
        state = yield Script("cancel", [job_key(job_id)], [now_text()])
        result = self._stop_before_sending(job_id, state)
        if result is not None:
            return result
        result, stream, entry = self._stop_entry((yield from steps.show(job_id)))
        if stream is not None:
            yield Command("xadd", (stream, entry))
        return result

    def _stop_before_sending(self, job_id: str, state: Any) -> StopResult | None:
        """What the cancel script's answer means: a result, or None when a stop must go to the host.

        Raises:
            ValueError: no signing key.
            LookupError: no such job.
        """
        self._signing_key_or_error()
        if state is None:
            raise LookupError(f"no fleet job {job_id!r}; pymgr fleet list shows the recent ones")
        name = text_of(state)
        if name == JobState.CANCELLED.value:
            return StopResult(job_id, "cancelled", None, name)
        return None

    def _signing_key_or_error(self) -> Ed25519PrivateKey:
        if self._key_id is None or self._signing_key is None:
            raise ValueError(
                "submitting and stopping need a signing key: FleetClient(..., key_id=ID, signing_key=KEY)"
            )
        return self._signing_key

    def _stop_entry(self, info: JobInfo) -> tuple[StopResult, str | None, dict[str, bytes]]:
        """For a job a host took: the result, and the signed stop with its stream (None: it has ended).

        A pinned job's stop goes to the host it was signed for (its hash's ``target``, written with the
        job), whatever ``received_by`` says: only that host can take it. Any host may write a job's hash
        (``acl.py``), so a host that rewrites ``target`` too can still turn the stop away. A tagged job's
        stop goes to ``received_by``: which host of the tag took it is known only there.
        """
        host = info.received_by
        if info.final:
            return StopResult(info.id, "ended", host, info.state), None, {}
        if info.target is not None and info.target.startswith("host:"):
            host = info.target.removeprefix("host:")
        if host is None:
            raise LookupError(f"fleet job {info.id} is {info.state} but names no host; nothing to stop")
        target = Target("ctl", host)
        params = {"job": info.id}
        stop = Job(
            uuid.uuid4().hex, "control", "stop", params, target, round(time.time(), 3), self._key_id or ""
        )
        return StopResult(info.id, "sent", host, info.state), target.stream, self._signed(stop)


def now_text() -> str:
    return f"{time.time():.3f}"
