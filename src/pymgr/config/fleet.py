"""The ``[fleet]`` table: this daemon as a member of a fleet, fed jobs through Redis Streams.

Data only. Absent (the default), the daemon is not a fleet member and never
imports the fleet's dependencies (docs/fleet.md). The fleet's keys are Ed25519
*public* keys: a host can check a job's signature but never make one
(docs/fleet.md, "Why Ed25519"); the private key belongs to whoever submits.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from pymgr.auth.settings import KEY_ID_PATTERN
from pymgr.config.section import Section

#: A host id or a tag: it is part of Redis key names (``fleet:host:<id>``), so no ``:``, spaces or globs.
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
#: The Redis URL schemes redis-py opens: a local Unix socket, plain TCP, TCP with TLS.
REDIS_SCHEMES = ("unix", "redis", "rediss")


def _host_name() -> str:
    """The default host id: the host name up to its first dot (``web1.example.com`` -> ``web1``)."""
    return socket.gethostname().split(".")[0] or "localhost"


class FleetKeyConfig(Section):
    """One key jobs may be signed with (``[[fleet.keys]]``): its id and its Ed25519 public key."""

    #: The key id a job names; ``fleet:ID`` in the policy.
    id: str = Field(pattern=KEY_ID_PATTERN)
    #: The Ed25519 public key (PEM, as ``pymgr fleet keygen`` writes ``ID.pub``).
    key_file: Path


class FleetConfig(Section):
    """A fleet member: where its Redis is, who it is, which jobs it takes and how long it waits."""

    #: ``unix:///run/redis/redis.sock``, ``redis://host:6379/0`` or ``rediss://`` (TLS).
    redis_url: str
    #: The Redis ACL user; None: the default user.
    username: str | None = None
    #: A file holding the Redis password (mode 0600, the daemon's own); None: no password.
    password_file: Path | None = None
    #: This host's id: its stream is ``fleet:host:<id>``. Default: the host name.
    host_id: str = Field(default_factory=_host_name, pattern=NAME_PATTERN)
    #: Capabilities: a job for a tag goes to exactly one host that has it (``fleet:tag:<tag>``).
    tags: list[str] = Field(default_factory=list, max_length=64)
    #: The keys jobs may be signed with; at least one.
    keys: list[FleetKeyConfig] = Field(min_length=1)
    #: Seconds the heartbeat key lives unless refreshed (every third of it): a host silent this long is
    #: shown dead by ``pymgr fleet hosts``. 30 s outlives a Redis failover (Sentinel's default
    #: down-after is 30 s) without hiding a dead host for minutes.
    lease_s: float = Field(30.0, ge=1, le=3600)
    #: Oldest job accepted, in seconds since it was signed (either way, for clock skew): a job replayed
    #: later than this is refused. Five minutes, as for signed requests (``[auth] clock_skew_s``).
    max_age_s: float = Field(300.0, gt=0, le=86400)
    #: Action jobs remembered as called here (``<state_dir>/fleet-actions.sqlite3``), each for ``max_age_s``
    #: after it was signed, so a replay is not called again. Full, a new action job is refused rather than
    #: risk a second call. 100 000 is 333 action jobs a second for the default 300 s, in about 10 MB.
    replay_max_entries: int = Field(100_000, ge=1, le=10_000_000)
    #: Jobs this host runs at once; it reads no more from Redis while this many are open.
    max_jobs: int = Field(16, ge=1, le=10_000)
    #: Entries kept in a job's output stream (``fleet:job:<id>:out``, XADD MAXLEN ~): the tail of a
    #: chatty run, not all of it (the run's own log on the host keeps everything).
    output_max_entries: int = Field(10_000, ge=1, le=1_000_000)
    #: Bytes of output per stream entry, at most.
    output_chunk_bytes: int = Field(16 * 1024, ge=256, le=1024 * 1024)
    #: Seconds between two looks at a running job's progress and output.
    poll_s: float = Field(0.2, gt=0, le=60)
    #: Seconds a blocking read waits for a new job before it looks again.
    block_s: float = Field(2.0, gt=0, le=60)
    #: Longest wait between two attempts to reach Redis (the wait doubles from 0.1 s up to this).
    reconnect_max_s: float = Field(10.0, ge=0.1, le=600)
    #: Deliveries a job may have without being acknowledged; the next one puts it on the dead-letter
    #: stream (``fleet:dead``) instead of running it. 3: a job may outlive two dead hosts, not a third.
    max_deliveries: int = Field(3, ge=1, le=1000)
    #: Entries kept in the dead-letter stream (``XADD MAXLEN ~``).
    dead_max_entries: int = Field(10_000, ge=1, le=1_000_000)
    #: Seconds between two looks for dead hosts' jobs (and renewals of the reaper lock). None: a third
    #: of ``lease_s``, so the lock's holder renews it twice before it would run out.
    reap_interval_s: float | None = Field(None, gt=0, le=3600)
    #: Whether this host may take the reaper lock and mark dead hosts' pinned jobs lost. False: it never
    #: takes the lock (its Redis user need not reach other hosts' streams: ``pymgr fleet acl --reapers``);
    #: it still claims its own tags' orphans.
    reaper: bool = True
    #: Seconds a host may be silent (no heartbeat, as a reaper saw it) before the reaper drops it from
    #: ``fleet:hosts``, provided nothing is pending for it; ``pymgr fleet hosts`` then stops listing it and
    #: no reaper visits it again. A week: a host down for a long weekend is still listed when it is missed.
    forget_host_after_s: float = Field(7 * 86400, ge=1, le=366 * 86400)
    #: Seconds a stopping daemon gives its fleet jobs to report the end of the runs its shutdown stopped
    #: (the final state and the ``XACK``), after the task manager has stopped them; what has not reported
    #: by then stays pending and is reported at the next start. Writes of a few ms each: 5 s leaves room
    #: for a slow Redis, and is counted in the service unit's stop timeout.
    stop_report_s: float = Field(5.0, ge=0, le=600)

    @field_validator("redis_url")
    @classmethod
    def _url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in REDIS_SCHEMES:
            raise ValueError(
                f"redis_url {value!r}: the scheme must be one of {', '.join(REDIS_SCHEMES)} "
                "(unix:///path/redis.sock, redis://host:6379/0, rediss://host:6380/0)"
            )
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            if not re.fullmatch(NAME_PATTERN, tag):
                raise ValueError(f"tag {tag!r}: letters, digits, '.', '_' and '-' only, 1 to 64 of them")
        if len(set(tags)) != len(tags):
            raise ValueError(f"tags {tags!r} name a tag twice")
        return tags

    @model_validator(mode="after")
    def _unique_keys(self) -> FleetConfig:
        ids = [key.id for key in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError(f"[[fleet.keys]] ids must be unique; got {ids}")
        return self

    @model_validator(mode="after")
    def _reap_within_lease(self) -> FleetConfig:
        if self.reap_interval_s is not None and self.reap_interval_s >= self.lease_s:
            raise ValueError(
                f"reap_interval_s ({self.reap_interval_s:g}) must be shorter than lease_s ({self.lease_s:g}): "
                "the reaper renews its lock every reap_interval_s, and the lock lives lease_s"
            )
        return self

    @property
    def reap_every_s(self) -> float:
        """Seconds between two reaper rounds: ``reap_interval_s``, or a third of ``lease_s``."""
        return self.lease_s / 3 if self.reap_interval_s is None else self.reap_interval_s

    def resolve_paths(self, absolute: Callable[[Path | None], Path | None]) -> FleetConfig:
        """A copy with ``password_file`` and each key's file made absolute by ``absolute`` (Config's)."""
        keys = [key.model_copy(update={"key_file": absolute(key.key_file)}) for key in self.keys]
        return self.model_copy(update={"password_file": absolute(self.password_file), "keys": keys})
