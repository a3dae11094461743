"""The fleet's Redis keys and the states a job's hash goes through: one list, for hosts and submitters.

Keys (docs/fleet.md, "The key layout"):
- ``fleet:host:<id>``, ``fleet:tag:<tag>``: the job streams (``jobs.Target.stream``);
  every host reads them in the consumer group ``GROUP``, its host id as consumer name.
- ``fleet:job:<id>``: the job's hash (``JobState`` in ``state``; who received it, progress, exit).
- ``fleet:job:<id>:out``: its output, a stream capped by ``[fleet] output_max_entries``.
- ``fleet:hb:<host>``: the host's heartbeat (JSON), expiring after ``[fleet] lease_s``.
- ``fleet:hosts``: the set of host ids that sent a heartbeat (a reaper drops one silent for
  ``[fleet] forget_host_after_s`` with nothing pending).
- ``fleet:silent``: the hosts a reaper found without a heartbeat, scored by when it first did.
- ``fleet:reaper``: the reaper lock, the id of the one host that marks dead hosts' pinned jobs lost.
- ``fleet:dead``: the dead-letter stream: jobs delivered more than ``[fleet] max_deliveries`` times.
- ``fleet:ctl:<host>``: the host's control stream (signed stops), read in ``GROUP`` too.
- ``fleet:jobs``: the index of recent jobs (a sorted set of ids by submit time, capped by the submitter).
"""

from __future__ import annotations

from enum import Enum

#: The consumer group of every job stream: one group per stream, shared by every host that reads it,
#: so a job on a tag stream goes to exactly one of them.
GROUP = "pymgr"
#: The set of the host ids that have sent a heartbeat and were not forgotten (``roster.py``).
HOSTS = "fleet:hosts"
#: The hosts of ``HOSTS`` a reaper found without a heartbeat (a sorted set, scored by when it first did).
SILENT = "fleet:silent"
#: The reaper lock (a string with a TTL): the host id of the one live daemon acting as reaper.
REAPER = "fleet:reaper"
#: The dead-letter stream: each entry the job (``job``, ``sig``) and why it was given up.
DEAD = "fleet:dead"
#: The index of recent jobs: ids scored by their submit time (``submitted_at`` unrounded), the oldest
#: trimmed past the submitter's cap.
JOBS = "fleet:jobs"


class JobState(str, Enum):
    """Where a fleet job is, as its hash's ``state`` says."""

    #: Written by the submitter with the job; no host has read it yet.
    QUEUED = "queued"
    #: A host read it, checked it and took it (``received_by``).
    RECEIVED = "received"
    #: Its task run is running on the host (``task_id``).
    RUNNING = "running"
    #: It ended well: the run exited 0, or the action returned (``result``).
    SUCCEEDED = "succeeded"
    #: The run exited non-zero, was killed, or the action raised (``error``, ``code``).
    FAILED = "failed"
    #: The run was stopped on the host.
    STOPPED = "stopped"
    #: The host would not run it: bad signature, too old, not for this host, or its policy (``error``).
    REFUSED = "refused"
    #: Pinned to a host that died: its lease ran out while the job was pending or queued there (``error``).
    LOST = "lost"
    #: Delivered more than ``max_deliveries`` times without an end: on the dead-letter stream (``error``).
    DEAD = "dead"
    #: Stopped before any host took it: no host will run it.
    CANCELLED = "cancelled"


#: The states a job does not leave.
FINAL = frozenset(
    {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.STOPPED,
        JobState.REFUSED,
        JobState.CANCELLED,
        JobState.LOST,
        JobState.DEAD,
    }
)


def job_key(job_id: str) -> str:
    """The hash of a job."""
    return f"fleet:job:{job_id}"


def output_key(job_id: str) -> str:
    """The output stream of a job."""
    return f"fleet:job:{job_id}:out"


def heartbeat_key(host_id: str) -> str:
    """The heartbeat of a host."""
    return f"fleet:hb:{host_id}"


def control_key(host_id: str) -> str:
    """The control stream of a host (signed stops for the jobs it took)."""
    return f"fleet:ctl:{host_id}"
