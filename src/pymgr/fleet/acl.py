"""The Redis ACL users of a fleet: one per host, confined to its own keys, and one for a submitter.

Pure functions: ``pymgr fleet acl`` prints what they return, for ``redis-cli``
or a Redis ``aclfile``.

Rules:
- Each user starts from ``reset`` (no commands, no keys, no channels) and
  gets only the commands its side sends, inside the Lua scripts included
  (Redis checks those too, and checks the keys a script is given as if it
  wrote them), and only its key patterns.
- A host's rights are ACL selectors (Redis 7), each a set of commands
  bound to a set of keys (``host_selectors``): consumer-group commands on
  its own host stream, its tags' streams and its control stream only;
  ``SET`` on its own heartbeat only; ``SADD`` on ``fleet:hosts`` only;
  ``XADD`` on output streams (``fleet:job:*:out``: a job id has no ``:``,
  so no job hash matches) and the dead-letter stream only; ``EXISTS`` on
  heartbeats; and the hash commands on ``fleet:job:*``.
- What a confined host can still do: write any job's hash (hosts report
  into job hashes, and a host cannot know the ids of jobs in advance), so
  it can fake a job's result, mark it cancelled or change its
  ``received_by`` or ``target`` (and so turn a stop away from the job's
  host: ``api.FleetApi._stop_entry``); append to or trim (``XADD MAXLEN``) any job's output
  stream and the dead-letter stream. What it cannot: queue into, trim, read
  or acknowledge another host's or another tag's stream, write another
  host's heartbeat or control stream, touch ``fleet:hosts`` but by
  ``SADD``, nor make any host run anything (a job is signed).
- Every host claims its tags' orphans (``claims.py``): it reads every
  heartbeat (``EXISTS``), claims on its own streams, and appends to the
  dead-letter stream ``fleet:dead``.
- Only the hosts named as reapers may take the lock ``fleet:reaper`` and
  reap (``reaper.py``). They get it through Redis 7 ACL selectors, each a
  set of commands bound to a set of keys: read the other hosts' streams
  (``XPENDING``, ``XRANGE``, ``XREVRANGE``, ``XINFO GROUPS``) and
  acknowledge or delete their entries (``XACK``, ``XDEL``), but neither add
  to them nor read them as a consumer; look at the other hosts' control
  streams (``XPENDING``); keep ``fleet:silent`` and drop a silent host from
  ``fleet:hosts`` (``SREM``, through the roster's script: ``roster.py``). Any other host gets NOPERM on all of it; its
  ``[fleet] reaper`` must be false.
- The submitter queues into any host's or tag's stream and any control
  stream, writes job hashes and the index, and reads heartbeats; it runs no
  consumer-group command, so it cannot take a job.
- A password is given as its SHA-256 (``#<hex>``), never in clear; a user
  without one is printed ``resetpass`` (it cannot log in until one is set).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from pymgr.fleet.keyspace import DEAD, HOSTS, SILENT, heartbeat_key

__all__ = [
    "HOST_JOB_COMMANDS",
    "HOST_KEYLESS_COMMANDS",
    "HOST_STREAM_COMMANDS",
    "REAPER_SELECTORS",
    "SUBMITTER_COMMANDS",
    "HostSpec",
    "acl_lines",
    "host_selectors",
    "host_user",
    "submitter_user",
]

#: What a host sends on its own streams (host, tags, control): its consumer groups, and its claims.
HOST_STREAM_COMMANDS = tuple("xgroup|create xreadgroup xack xpending xclaim".split())
#: What a host sends on any key or none: a ping, and the loading of its scripts.
HOST_KEYLESS_COMMANDS = ("ping", "script|load")
#: What a host sends on job hashes: its reports, the take script (EVAL: HGET, HSET), the refuse script
#: (EVALSHA: HGET, HSET).
HOST_JOB_COMMANDS = tuple("hset hget hmget eval evalsha".split())
#: What only a reaper sends, as ACL selectors ``(commands, keys)``: the lock script (GET, SET, DEL of
#: ``fleet:reaper``); the reading of dead hosts' streams, and their entries acknowledged or deleted;
#: and the lost script, given a job hash, a host stream and a heartbeat (Redis checks a script's keys
#: against one selector; the commands inside it against each one: HSET by the root's ``fleet:job:*``).
#: The roster (``roster.py``): ``fleet:silent`` kept, a silent host's control stream looked at for a
#: stop it read and never applied, and the forget script (EXISTS of the heartbeat by the host's root,
#: XREVRANGE of its stream, SREM of ``fleet:hosts``, ZREM of ``fleet:silent``).
REAPER_SELECTORS = (
    (("evalsha", "get", "set", "del"), ("~fleet:reaper",)),
    (
        ("smembers", "exists", "xpending", "xrange", "xrevrange", "xinfo|groups", "xack", "xdel"),
        ("~fleet:host:*", "%R~fleet:hosts"),
    ),
    (("evalsha",), ("~fleet:host:*", "~fleet:job:*", "~fleet:hb:*")),
    (("zrange", "zadd", "zrem"), (f"~{SILENT}",)),
    (("exists", "xpending"), ("%R~fleet:ctl:*",)),
    (("srem",), (f"~{HOSTS}",)),
    (("evalsha",), (f"~{HOSTS}", f"~{SILENT}", "~fleet:hb:*", "~fleet:host:*")),
)
#: What a submitter sends: its connection's name (``api.CLIENT_NAME``), the submit and cancel scripts
#: (EVALSHA, loaded once: EXISTS, HSET, HGET, XADD, ZADD, ZREMRANGEBYRANK), a stop (XADD), and the
#: reads of show, jobs, output, follow and hosts.
SUBMITTER_COMMANDS = tuple(
    "ping client|setname evalsha eval script|load exists hset hget hgetall xadd zadd zremrangebyrank"
    " zcard zrevrange xrange xread smembers get".split()
)
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True, slots=True)
class HostSpec:
    """A host as its ACL user needs it: its id and tags (``[fleet] host_id`` and ``tags``)."""

    id: str
    tags: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> HostSpec:
        """``ID`` or ``ID:TAG,TAG``.

        Raises:
            ValueError: an id or tag that is no fleet name.
        """
        host_id, _, tags = text.partition(":")
        spec = cls(host_id, tuple(tag for tag in tags.split(",") if tag))
        for name in (spec.id, *spec.tags):
            if not _NAME.fullmatch(name):
                raise ValueError(f"{text!r}: a host is ID or ID:TAG,TAG (letters, digits, '.', '_', '-')")
        return spec


def host_user(host_id: str) -> str:
    """The ACL user of a host (its ``[fleet] username``)."""
    return f"fleet-host-{host_id}"


def submitter_user(name: str) -> str:
    """The ACL user of a submitter (``FleetClient(username=...)``).

    Raises:
        ValueError: a name that is no fleet name.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"submitter {name!r}: letters, digits, '.', '_' and '-' only, 1 to 64 of them")
    return f"fleet-submitter-{name}"


def host_selectors(host: HostSpec) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """A host's rights as ``(commands, key patterns)``: the first is the user's root, the others selectors.

    Redis allows a command when one of them allows it with every key it names; it checks the keys a
    script is given against the selector of its ``EVALSHA``, then each command inside the script again.
    """
    own = [f"fleet:host:{host.id}", *(f"fleet:tag:{tag}" for tag in host.tags), f"fleet:ctl:{host.id}"]
    own_keys = tuple(f"~{key}" for key in own)
    return [
        (HOST_KEYLESS_COMMANDS + HOST_STREAM_COMMANDS, own_keys),
        (HOST_JOB_COMMANDS, ("~fleet:job:*",)),
        (("xadd",), ("~fleet:job:*:out", f"~{DEAD}")),
        (("set",), (f"%W~{heartbeat_key(host.id)}",)),
        (("sadd",), (f"~{HOSTS}",)),
        (("exists",), ("%R~fleet:hb:*",)),
        # The dead-letter script (claims.py): an own stream (XACK), fleet:dead (XADD), a job hash (HGET, HSET).
        (("evalsha",), (*own_keys, f"~{DEAD}", "~fleet:job:*")),
    ]


def acl_lines(
    hosts: Iterable[HostSpec],
    submitter: str,
    passwords: Mapping[str, str] | None = None,
    reapers: Collection[str] = (),
) -> list[str]:
    """``ACL SETUSER`` lines: one per host, then the submitter's.

    Args:
        passwords: by user name; a user without one gets ``resetpass``.
        reapers: the ids of the hosts that may take the reaper lock and reap (``REAPER_SELECTORS``).

    Raises:
        ValueError: a reaper that is none of ``hosts``.
    """
    hosts = list(hosts)
    unknown = sorted(set(reapers) - {host.id for host in hosts})
    if unknown:
        raise ValueError(f"reapers {', '.join(unknown)}: not among the hosts given")
    passwords = passwords or {}
    lines = []
    for host in hosts:
        selectors = host_selectors(host)
        if host.id in reapers:
            selectors += REAPER_SELECTORS
        root_commands, root_keys = selectors[0]
        lines.append(_line(host_user(host.id), passwords, root_commands, list(root_keys), selectors[1:]))
    patterns = ["~fleet:host:*", "~fleet:tag:*", "~fleet:ctl:*", "~fleet:job:*", "~fleet:jobs"]
    patterns += ["%R~fleet:hb:*", "%R~fleet:hosts"]
    user = submitter_user(submitter)
    lines.append(_line(user, passwords, SUBMITTER_COMMANDS, patterns))
    return lines


def _line(
    user: str,
    passwords: Mapping[str, str],
    commands: Iterable[str],
    keys: list[str],
    selectors: Iterable[tuple[Iterable[str], Iterable[str]]] = (),
) -> str:
    password = passwords.get(user)
    secret = "resetpass" if password is None else "#" + hashlib.sha256(password.encode()).hexdigest()
    line = f"ACL SETUSER {user} reset on {secret} -@all {_rules(commands, keys)}"
    return "".join([line, *(f" ({_rules(*selector)})" for selector in selectors)])


def _rules(commands: Iterable[str], keys: Iterable[str]) -> str:
    return " ".join([*(f"+{command}" for command in commands), *keys])
