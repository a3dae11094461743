"""The submitting side of the fleet: ``FleetClient`` signs jobs, queues them and reads what hosts report.

Rules:
- A job is checked before it leaves by the decoder hosts use (``jobs.decode``
  of its own entry): a job a host would refuse as malformed is a
  ``ValueError`` here.
- ``submit`` is idempotent by ``key``: the key is the job's id, and a submit
  whose id already has a hash queues nothing and returns the id. The hash and
  the stream entry are written by one Lua script, so a job is never queued
  without its hash, nor its hash written without the job.
- Results are frozen dataclasses read from the job's hash; what a host wrote
  there is data, never trusted for more than showing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pymgr.fleet import jobs
from pymgr.fleet.jobs import Job, JobRefused, Target
from pymgr.fleet.keyspace import FINAL, HOSTS, JobState, heartbeat_key, job_key, output_key

__all__ = ["FleetClient", "HostInfo", "JobInfo", "host_info_of", "job_info_of", "submission"]

#: Seconds between two looks at a job's hash while waiting.
POLL_S = 0.05

# The job's hash and its stream entry in one step, unless the id is taken (idempotent submit).
SUBMIT_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('XADD', KEYS[2], '*', 'job', ARGV[1], 'sig', ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A job as its hash shows it."""

    id: str
    state: str
    kind: str | None
    type: str | None
    target: str | None
    #: The host that took it; None while no host has.
    received_by: str | None
    #: The id of its task run on that host.
    task_id: int | None
    exit_code: int | None
    progress: float | None
    error: str | None
    #: An action job's result (JSON, decoded).
    result: Any
    #: Every field of the hash, as text.
    fields: Mapping[str, str]

    @property
    def final(self) -> bool:
        """Whether the job has ended (succeeded, failed, stopped or refused)."""
        return self.state in {state.value for state in FINAL}


@dataclass(frozen=True, slots=True)
class HostInfo:
    """A fleet member as its heartbeat shows it."""

    id: str
    tags: tuple[str, ...]
    #: False when its heartbeat has expired (``[fleet] lease_s`` without one).
    alive: bool
    #: Seconds since the epoch of its last heartbeat; None when it has expired.
    last_seen: float | None
    running: int | None


class FleetClient:
    """Submit jobs to a fleet and read their state (sync).

    Args:
        redis_url: ``unix:///path/redis.sock``, ``redis://host:6379/0`` or ``rediss://...``.
        key_id: the id of the signing key, as hosts know it (``[[fleet.keys]] id``); needed to submit.
        signing_key: the Ed25519 private key (``keys.load_private_key``); needed to submit.
        username, password: the Redis ACL user.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        key_id: str | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        # Any: redis-py types each command's reply as the union of its sync and async forms.
        self._redis: Any = redis.Redis.from_url(redis_url, username=username, password=password)
        self._key_id = key_id
        self._signing_key = signing_key
        self._submit_script = self._redis.register_script(SUBMIT_SCRIPT)

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        type: str,
        params: Mapping[str, Any] | None = None,
        *,
        host: str | None = None,
        tag: str | None = None,
        key: str | None = None,
        kind: Literal["task", "action"] = "task",
    ) -> str:
        """Sign and queue a job for one host (``host``) or any one host with a tag (``tag``).

        Args:
            type: a task type (kind ``task``) or ``module.action`` (kind ``action``).
            key: the job's id; a second submit with the same key queues nothing. Default: a random id.

        Returns:
            The job's id.

        Raises:
            ValueError: not exactly one of host and tag, no signing key, or a job hosts would refuse as malformed.
            redis.RedisError: Redis cannot be reached or refuses the write.
        """
        job_id, keys, args = submission(type, params, host, tag, key, kind, self._key_id, self._signing_key)
        self._submit_script(keys=keys, args=args)
        return job_id

    def show(self, job_id: str) -> JobInfo:
        """The job as its hash shows it now.

        Raises:
            LookupError: no job has this id (or its hash expired).
        """
        return job_info_of(job_id, self._redis.hgetall(job_key(job_id)))

    def wait_received(self, job_id: str, timeout_s: float = 30.0) -> JobInfo:
        """Wait until a host has taken the job (or refused it); the job then.

        Raises:
            TimeoutError: no host took it within ``timeout_s`` (is a host with that id or tag alive?).
        """
        return self._wait(job_id, timeout_s, taken, "taken")

    def wait(self, job_id: str, timeout_s: float = 300.0) -> JobInfo:
        """Wait until the job has ended; its final state.

        Raises:
            TimeoutError: it had not ended within ``timeout_s``.
        """
        return self._wait(job_id, timeout_s, ended, "ended")

    def output(self, job_id: str) -> bytes:
        """The job's output as its capped stream still holds it."""
        return b"".join(fields[b"data"] for _, fields in self._redis.xrange(output_key(job_id)))

    def hosts(self) -> list[HostInfo]:
        """Every host that has sent a heartbeat, by id: alive or not, its tags and running jobs."""
        ids = sorted(text_of(h) for h in self._redis.smembers(HOSTS))
        return [host_info_of(host_id, self._redis.get(heartbeat_key(host_id))) for host_id in ids]

    def _wait(self, job_id: str, timeout_s: float, done: Any, what: str) -> JobInfo:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                info = self.show(job_id)
            except LookupError:
                info = None
            if info is not None and done(info):
                return info
            if time.monotonic() >= deadline:
                raise not_in_time(job_id, what, timeout_s, info)
            time.sleep(POLL_S)


def submission(
    type: str,
    params: Mapping[str, Any] | None,
    host: str | None,
    tag: str | None,
    key: str | None,
    kind: Literal["task", "action"],
    key_id: str | None,
    signing_key: Ed25519PrivateKey | None,
) -> tuple[str, list[str], list[Any]]:
    """A signed job, as the submit script's keys and args, and its id (the sync and async clients share it).

    Raises:
        ValueError: as ``FleetClient.submit`` says.
    """
    if (host is None) == (tag is None):
        raise ValueError(
            "a job goes to one host (host=ID) or one host with a tag (tag=TAG): give exactly one"
        )
    if key_id is None or signing_key is None:
        raise ValueError("submitting needs a signing key: FleetClient(..., key_id=ID, signing_key=KEY)")
    target = Target("host", host) if host is not None else Target("tag", tag or "")
    job_id = key or uuid.uuid4().hex
    job = Job(job_id, kind, type, dict(params or {}), target, round(time.time(), 3), key_id)
    try:
        entry = jobs.encode(job, signing_key.sign)
        jobs.decode(entry)
    except (JobRefused, ValueError) as exc:
        raise ValueError(f"this job would be refused: {exc}") from None
    fields = {"state": JobState.QUEUED.value, "kind": kind, "type": type, "target": str(target)}
    fields["submitted_at"] = str(job.submitted_at)
    args: list[Any] = [entry["job"], entry["sig"], *(x for pair in fields.items() for x in pair)]
    return job_id, [job_key(job_id), target.stream], args


def taken(info: JobInfo) -> bool:
    """Whether a host has taken the job (or refused it)."""
    return info.received_by is not None or info.final


def ended(info: JobInfo) -> bool:
    return info.final


def not_in_time(job_id: str, what: str, timeout_s: float, info: JobInfo | None) -> TimeoutError:
    """The error of a wait that ran out: what the job was not, and the state it is in."""
    state = "no hash" if info is None else info.state
    return TimeoutError(f"fleet job {job_id} was not {what} within {timeout_s:g} s (state: {state})")


def host_info_of(host_id: str, beat: bytes | None) -> HostInfo:
    """A host from its heartbeat (None: expired)."""
    if beat is None:
        return HostInfo(host_id, (), False, None, None)
    data = json.loads(beat)
    return HostInfo(host_id, tuple(data["tags"]), True, float(data["at"]), int(data["running"]))


def job_info_of(job_id: str, raw: Mapping[Any, Any]) -> JobInfo:
    """A job from its hash as Redis returns it.

    Raises:
        LookupError: the hash is empty (no such job).
    """
    if not raw:
        raise LookupError(f"no fleet job {job_id!r}; pymgr fleet submit prints the id of the jobs it queues")
    return _job_info(job_id, {text_of(k): text_of(v) for k, v in raw.items()})


def _job_info(job_id: str, fields: dict[str, str]) -> JobInfo:
    def number(name: str, cast: Any) -> Any:
        value = fields.get(name)
        try:
            return None if value in (None, "") else cast(value)
        except ValueError:
            return None

    result: Any = fields.get("result")
    try:
        result = None if result is None else json.loads(result)
    except ValueError:  # a host wrote something else: shown as the text it is
        pass
    return JobInfo(
        id=job_id,
        state=fields.get("state", "unknown"),
        kind=fields.get("kind"),
        type=fields.get("type"),
        target=fields.get("target"),
        received_by=fields.get("received_by"),
        task_id=number("task_id", int),
        exit_code=number("exit_code", int),
        progress=number("progress", float),
        error=fields.get("error"),
        result=result,
        fields=fields,
    )


def text_of(value: Any) -> str:
    """A Redis reply as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
