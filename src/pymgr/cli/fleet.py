"""``pymgr fleet``: the submitting side of the fleet (docs/fleet.md); keygen, submit, show, hosts here.

``stop``, ``list``, ``logs`` and ``acl`` are in ``fleetjobs.py``; what all
share (where Redis is, the client, the options) in ``_fleetshared.py``.

Exit codes: 0 done, 1 an error (the message on stderr), 2 a usage error,
3 no host took the job in time (``submit``) or the job had not ended in time
(``stop``), 4 the job ended without a run (refused, lost, dead, cancelled), or
with ``submit --wait`` ended other than succeeded, 69 Redis cannot be reached
or refuses the user (``_fleetshared.EXIT_NO_REDIS``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from pymgr.cli import fleetjobs
from pymgr.cli._render import _when, percent
from pymgr.cli._fleetshared import (
    EXIT_JOB_FAILED,
    EXIT_NOT_TAKEN,
    ConfigOpt,
    KeyIdOpt,
    RedisOpt,
    SigningKeyOpt,
    age,
    check_timeout,
    client_of,
    echo,
    fail,
    job_data,
    need_fleet,
)

fleet_app = typer.Typer(
    help="Submit signed jobs to a fleet of pymgr hosts through Redis, and see hosts and jobs.",
    no_args_is_help=True,
)
fleet_app.command("stop")(fleetjobs.stop)
fleet_app.command("list")(fleetjobs.list_jobs)
fleet_app.command("logs")(fleetjobs.logs)
fleet_app.command("acl")(fleetjobs.acl)


@fleet_app.command()
def keygen(
    key_id: Annotated[
        str, typer.Argument(metavar="ID", help="The key's id: fleet:ID in the hosts' policies.")
    ],
    directory: Annotated[
        Path, typer.Option("--dir", metavar="DIR", help="Where to write ID.key and ID.pub.")
    ] = Path("."),
) -> None:
    """Make a signing key pair: ID.key (private, 0600: for submitters) and ID.pub (for every host)."""
    need_fleet()
    from pymgr.fleet.keys import keygen as make

    try:
        private, public = make(directory, key_id)
    except OSError as exc:
        fail(f"cannot write the key pair in {directory}: {exc.strerror or exc}")
    typer.echo(
        f"{private} (keep it with whoever submits)\n{public} (give it to each host: [[fleet.keys]] key_file)"
    )


TypeArg = Annotated[str, typer.Argument(metavar="TYPE", help="A task type, or module.action with --action.")]
ParamsArg = Annotated[
    list[str] | None, typer.Argument(metavar="NAME=VALUE...", help="Params: name=text or name:=JSON.")
]
HostOpt = Annotated[str | None, typer.Option("--host", metavar="ID", help="Run it on this host.")]
TagOpt = Annotated[str | None, typer.Option("--tag", metavar="TAG", help="Run it on one host with this tag.")]
JobKeyOpt = Annotated[
    str | None,
    typer.Option("--key", metavar="K", help="The job's id; a second submit with it queues nothing."),
]
ActionOpt = Annotated[bool, typer.Option("--action", help="TYPE is module.action, called once on the host.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Wait until the job has ended, and print how.")]
TakenTimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", min=0.1, metavar="SECONDS", help="How long to wait for a host to take it."),
]


@fleet_app.command()
def submit(
    ctx: typer.Context,
    type: TypeArg,
    params: ParamsArg = None,
    host: HostOpt = None,
    tag: TagOpt = None,
    key: JobKeyOpt = None,
    action: ActionOpt = False,
    wait: WaitOpt = False,
    timeout: TakenTimeoutOpt = 30.0,
    redis_url: RedisOpt = None,
    config: ConfigOpt = None,
    key_id: KeyIdOpt = None,
    signing_key: SigningKeyOpt = None,
) -> None:
    """Sign and queue a job for one host (--host) or one host with a tag (--tag); print who took it."""
    from pymgr.cli._params import _build_params, _UsageError

    if (host is None) == (tag is None):
        fail("give --host ID or --tag TAG (exactly one)", 2)
    check_timeout(timeout)
    if key_id is None or signing_key is None:
        fail("submitting needs --key-id ID and --signing-key FILE (pymgr fleet keygen makes a pair)", 2)
    try:
        values = _build_params(params or [], lambda: None, f"fleet job {type}")
    except _UsageError as exc:
        fail(str(exc), 2)
    kind: Literal["task", "action"] = "action" if action else "task"
    with client_of(redis_url, config, key_id, signing_key) as client:
        try:
            job_id = client.submit(type, values, host=host, tag=tag, key=key, kind=kind)
            info = client.wait_received(job_id, timeout_s=timeout)
            if wait:
                info = client.wait(job_id, timeout_s=math.inf)
        except ValueError as exc:
            fail(str(exc), 2)
        except TimeoutError as exc:
            fail(f"{exc}; the job stays queued", EXIT_NOT_TAKEN)
    echo(ctx, job_data(info), [_said(job_id, info)])
    if info.state in UNSEEN_THROUGH or (wait and info.state != "succeeded"):
        raise typer.Exit(EXIT_JOB_FAILED)


#: The ends of a job no host saw through: ``submit`` exits EXIT_JOB_FAILED on them, with --wait or not.
UNSEEN_THROUGH = frozenset({"refused", "lost", "dead", "cancelled"})
#: The ends a host other than the job's own wrote (the reaper, or a host that gave it up).
MARKED = frozenset({"lost", "dead"})


def _said(job_id: str, info: Any) -> str:
    """``job ID: STATE by HOST[: error]``: the host that took or refused it, or that marked it lost or dead;
    no ``by`` when there is none (cancelled before any host took it)."""
    if info.state in MARKED:
        marked = info.fields.get("reaped_by")
        how = f" (marked by host {marked})" if marked else ""
    else:
        who = info.received_by or info.fields.get("refused_by")
        how = f" by {who}" if who else ""
    return f"job {job_id}: {info.state}{how}" + (f": {info.error}" if info.error else "")


@fleet_app.command()
def show(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job's id, as submit printed it.")],
    redis_url: RedisOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A job as its hash shows it: state, host, its run there, exit, error; times in UTC."""
    with client_of(redis_url, config) as client:
        try:
            info = client.show(job_id)
        except LookupError as exc:
            fail(str(exc))
    echo(ctx, job_data(info), show_lines(info.fields))


def show_lines(fields: Mapping[str, str]) -> list[str]:
    """``name: value`` for each field of a job's hash that has a value, by name; ``*_at`` times in UTC
    ISO 8601, ``progress`` in percent, and ``task_id`` (the run's id in its host's own task store) as
    ``run: ID on HOST``."""
    shown = {}
    for name, value in fields.items():
        if value == "":
            continue
        if name == "task_id":
            name, value = "run", f"{value} on {fields.get('received_by') or '?'}"
        elif name == "progress":
            value = _number(value, percent)
        elif name.endswith("_at"):
            value = _number(value, _when)
        shown[name] = value
    return [f"{name}: {value}" for name, value in sorted(shown.items())]


def _number(value: str, shown: Callable[[float], Any]) -> str:
    try:
        return str(shown(float(value)))
    except ValueError:
        return value  # not a number: shown as the hash holds it


@fleet_app.command()
def hosts(ctx: typer.Context, redis_url: RedisOpt = None, config: ConfigOpt = None) -> None:
    """Every host that has sent a heartbeat: alive or not, tags, running jobs, its last heartbeat's age."""
    with client_of(redis_url, config) as client:
        found = client.hosts()
    now = time.time()
    lines = [
        f"{h.id}\t{'alive' if h.alive else 'silent'}\ttags={','.join(h.tags) or '-'}"
        f"\trunning={h.running if h.alive else '-'}\tlast_heartbeat={_ago(h.last_seen, now)}"
        for h in found
    ]
    echo(ctx, [dataclasses.asdict(h) for h in found], lines or ["no host has sent a heartbeat"])


def _ago(epoch_s: float | None, now: float) -> str:
    # A silent host's heartbeat has expired in Redis: when it was sent is no longer known.
    return "expired" if epoch_s is None else f"{age(epoch_s, now)} ago"
