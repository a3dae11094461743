"""pymgr's side of the fleet bench: three daemons as fleet hosts, and a ``FleetClient`` submitting to their tag.

Each host is a real ``pymgr serve`` with its own state directory, socket
and host id, reading the tag ``bench``; the job is the task type ``noop``
(``/bin/true``), signed with Ed25519 by the submitter, checked by each host
(signature, target, age), allowed by the host's own policy to the subject
``fleet:bench`` alone, audited, and run as a task run keyed by the job id,
as any fleet job is. The per-identity rate limit is raised as
bench/servers.py raises it (the limiter stays in the path; only its refusal
is out of reach: 50 calls/s by default would be the figure).

Timestamps come from the job's hash, written by the host: ``running_at``
(the run has started) and ``ended_at``; the submit time is the submitter's
clock just before ``submit``, as RQ's ``enqueued_at`` is its client's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import redis

from bench.servers import Server, ServerError, spawn_server, stop_all
from pymgr.fleet.client import FleetClient
from pymgr.fleet.keys import keygen, load_private_key
from pymgr.fleet.keyspace import FINAL, heartbeat_key, job_key

#: The signing key's id; the hosts' policy names ``fleet:bench``.
KEY_ID = "bench"
TAG = "bench"
#: Seconds the hosts get to send their first heartbeat.
START_TIMEOUT_S = 30.0
_FINAL = {state.value.encode() for state in FINAL}

HOST_CONFIG = """
state_dir = "state"
log_level = "warning"

[http]
unix_socket = "pymgr.sock"
socket_mode = "0600"

[limits]
rate_per_s = 1e12
rate_burst = 1000000000000

[modules]
enabled = ["tasks", "demo"]

[tasks]
stop_grace_s = 1
# The keeper stays between the bench's runs, so that its CPU time is counted whole.
keeper_idle_exit_s = 600

[tasks.types.noop]
doc = "Nothing: the fleet bench's job."
argv = ["/bin/true"]
cwd = "/"

[fleet]
redis_url = "{redis_url}"
host_id = "{host_id}"
tags = ["{tag}"]
max_jobs = {max_jobs}

[[fleet.keys]]
id = "{key_id}"
key_file = "{public_key}"

[[policy.rules]]
name = "the bench's submitter may start the no-op task and call the no-op action, nothing else"
subjects = ["fleet:{key_id}"]
actions = ["tasks.start:noop", "demo.echo"]
"""


class PymgrFleet:
    """Three hosts and a submitter; ``submit``, ``remaining`` and ``timestamps`` as the bench needs them."""

    def __init__(
        self, workdir: Path, redis_url: str, hosts: int = 3, kind: str = "task", max_jobs: int = 16
    ) -> None:
        self.name = "pymgr" if kind == "task" else "pymgr (action)"
        self._kind = kind
        self._max_jobs = max_jobs
        self._workdir = workdir
        self._redis_url = redis_url
        self._host_ids = [f"host{i + 1}" for i in range(hosts)]
        self._servers: list[Server] = []
        self._redis = redis.Redis.from_url(redis_url)
        self._client: FleetClient | None = None
        job = (
            "task jobs: the task type noop = /bin/true, a process per job"
            if kind == "task"
            else "action jobs: demo.echo, in the daemon (no process)"
        )
        self.note = (
            f"{hosts} daemons (pymgr serve) as hosts of tag {TAG!r}, {job}; Ed25519-signed jobs, "
            "the host's policy and audit on every job"
        )

    def start(self) -> None:
        keys = workdir_keys(self._workdir)
        for host_id in self._host_ids:
            directory = self._workdir / host_id
            directory.mkdir()
            config = HOST_CONFIG.format(
                redis_url=self._redis_url,
                host_id=host_id,
                tag=TAG,
                key_id=KEY_ID,
                public_key=keys[1],
                max_jobs=self._max_jobs,
            )
            (directory / "pymgr.toml").write_text(config)
            argv = [sys.executable, "-m", "pymgr", "serve", "--config", str(directory / "pymgr.toml")]
            self._servers.append(spawn_server(host_id, argv, directory, cwd=directory))
        self._wait_hosts()
        self._client = FleetClient(self._redis_url, key_id=KEY_ID, signing_key=load_private_key(keys[0]))

    def _wait_hosts(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(self._redis.exists(heartbeat_key(h)) for h in self._host_ids):
            for server in self._servers:
                if server.proc.poll() is not None:
                    raise ServerError(f"{server.name} exited:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"the pymgr hosts sent no heartbeat within {START_TIMEOUT_S:g} s")
            time.sleep(0.05)

    def submit(self) -> tuple[str, float]:
        assert self._client is not None, "start() first"
        sent = time.time()
        if self._kind == "task":
            return self._client.submit("noop", tag=TAG), sent
        return self._client.submit("demo.echo", tag=TAG, kind="action"), sent

    def remaining(self, ids: list[str]) -> list[str]:
        """The jobs not ended yet."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(job_key(job_id), "state")
        return [job_id for job_id, state in zip(ids, pipe.execute(), strict=True) if state not in _FINAL]

    def timestamps(self, ids: list[str], sent: list[float]) -> list[tuple[float, float, float, bool]]:
        """(sent, running_at, ended_at, succeeded) of each job: the submitter's clock, then its host's."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(job_key(job_id), "running_at", "ended_at", "state")
        rows = []
        for at, (running_at, ended_at, state) in zip(sent, pipe.execute(), strict=True):
            rows.append((at, float(running_at or "nan"), float(ended_at or "nan"), state == b"succeeded"))
        return rows

    def pids(self) -> list[int]:
        """The daemons (their keepers and runs are their children)."""
        return [server.pid for server in self._servers]

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        stop_all(self._servers)
        self._redis.close()


def workdir_keys(workdir: Path) -> tuple[Path, Path]:
    directory = workdir / "keys"
    directory.mkdir(parents=True)
    return keygen(directory, KEY_ID)
