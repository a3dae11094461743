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
- The two clients differ in their I/O only (``_connect``, and a method per
  request written once for each: Python cannot type one method for both).
"""

from __future__ import annotations

import abc
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pymgr.fleet import jobs
from pymgr.fleet.jobs import Job, JobRefused, Target
from pymgr.fleet.keyspace import JOBS, JobState, job_key
from pymgr.fleet.results import JobInfo, StopResult, text_of

__all__ = ["DEFAULT_INDEX_MAX_JOBS", "MAX_LIST", "FleetApi"]

#: Seconds between two looks at a job's hash while waiting.
POLL_S = 0.05
#: Jobs the index ``fleet:jobs`` keeps (the newest); ``pymgr fleet list`` sees these. About 1 MB of
#: Redis memory for the index itself; the jobs' hashes are the submitter's to expire or delete.
DEFAULT_INDEX_MAX_JOBS = 10_000
#: The most jobs one ``jobs`` call returns.
MAX_LIST = 1000
#: Job ids read from the index per round trip while listing.
LIST_PAGE = 200
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
        self._submit_script = self._redis.register_script(SUBMIT_SCRIPT)
        self._cancel_script = self._redis.register_script(CANCEL_SCRIPT)

    @abc.abstractmethod
    def _connect(self, redis_url: str, **options: Any) -> Any:
        """The redis-py client (sync or asyncio) of this client's I/O."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key_id={self._key_id!r})"

    def _signed(self, job: Job) -> dict[str, bytes]:
        signing_key = self._signing_key_or_error()
        try:
            entry = jobs.encode(job, signing_key.sign)
            jobs.decode(entry)
        except (JobRefused, ValueError) as exc:
            raise ValueError(f"this job would be refused: {exc}") from None
        return entry

    def _submission(
        self,
        type: str,
        params: Mapping[str, Any] | None,
        host: str | None,
        tag: str | None,
        key: str | None,
        kind: Literal["task", "action"],
    ) -> tuple[str, list[str], list[Any]]:
        """A signed job, as the submit script's keys and args, and its id.

        Raises:
            ValueError: as ``FleetClient.submit`` says.
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
        return job_id, [job_key(job_id), target.stream, JOBS], args

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


def matches(info: JobInfo, state: str | None, host: str | None, tag: str | None) -> bool:
    """Whether a listed job passes the filters: its state; the host that took it or is its target; its tag."""
    if state is not None and info.state != state:
        return False
    if host is not None and host != info.received_by and info.target != f"host:{host}":
        return False
    return tag is None or info.target == f"tag:{tag}"


def check_list_filters(state: str | None, limit: int) -> None:
    """Raises ValueError: a state no job has, or ``limit`` outside 1..``MAX_LIST``."""
    states = [s.value for s in JobState]
    if state is not None and state not in states:
        raise ValueError(f"state {state!r} is not a job's state; one of {', '.join(states)}")
    if not 1 <= limit <= MAX_LIST:
        raise ValueError(f"limit must be between 1 and {MAX_LIST}, not {limit!r}")


def now_text() -> str:
    return f"{time.time():.3f}"
