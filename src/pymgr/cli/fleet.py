"""``pymgr fleet keygen|submit|show|hosts``: the submitting side of the fleet (docs/fleet.md).

Rules:
- These commands talk to Redis, never to a daemon: ``--redis URL``, else the
  ``[fleet]`` table of ``--config FILE`` (its ``redis_url``, ``username`` and
  ``password_file``), else ``$PYMGR_FLEET_REDIS``.
- Submitting signs with the private key of ``--signing-key FILE`` (or
  ``$PYMGR_FLEET_SIGNING_KEY``) under ``--key-id`` (``$PYMGR_FLEET_KEY_ID``);
  a host's config never holds it.
- They need the fleet extra; without it each says what to install. Nothing
  of the fleet is imported until one of them runs.
- Exit codes: 0 done, 1 an error (the message on stderr), 2 a usage error,
  3 no host took the job in time (``submit``), 4 the job ended but not well
  (``submit --wait``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer

from pymgr.cli.daemondeps import no_fleet_message

if TYPE_CHECKING:
    from pymgr.fleet.client import FleetClient

fleet_app = typer.Typer(
    help="Submit signed jobs to a fleet of pymgr hosts through Redis, and see hosts and jobs.",
    no_args_is_help=True,
)

#: Exit code when no host took a job within --timeout.
EXIT_NOT_TAKEN = 3
#: Exit code of ``submit --wait`` when the job ended other than succeeded.
EXIT_JOB_FAILED = 4

RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis", metavar="URL", envvar="PYMGR_FLEET_REDIS", help="unix:///path, redis:// or rediss://."
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        dir_okay=False,
        help="Read redis_url and the Redis user from its fleet table.",
    ),
]


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _need_fleet() -> None:
    missing = no_fleet_message("pymgr fleet")
    if missing is not None:
        typer.echo(missing, err=True)
        raise typer.Exit(1)


def _client(
    redis_url: str | None, config: Path | None, key_id: str | None = None, key: Path | None = None
) -> FleetClient:
    _need_fleet()
    from pymgr.fleet.client import FleetClient
    from pymgr.fleet.keys import FleetKeyError, load_private_key, read_secret_file

    username = password = None
    try:
        if redis_url is None and config is not None:
            fleet = _fleet_table(config)
            redis_url, username = fleet.redis_url, fleet.username
            password = None if fleet.password_file is None else read_secret_file(fleet.password_file)
        signing_key = None if key is None else load_private_key(key)
    except FleetKeyError as exc:
        _fail(str(exc))
    if redis_url is None:
        _fail("say where Redis is: --redis URL, --config FILE (its [fleet] table) or $PYMGR_FLEET_REDIS", 2)
    return FleetClient(
        redis_url, key_id=key_id, signing_key=signing_key, username=username, password=password
    )


def _fleet_table(path: Path) -> Any:
    from pymgr.config import ConfigError, load_config

    try:
        fleet = load_config(path).fleet
    except ConfigError as exc:
        _fail(str(exc))
    if fleet is None:
        _fail(f"config {path} has no [fleet] table; give --redis URL")
    return fleet


def _print(ctx: typer.Context, data: Any, lines: list[str]) -> None:
    if ctx.obj is not None and ctx.obj.json:
        typer.echo(json.dumps(data, ensure_ascii=False, default=str))
    else:
        for line in lines:
            typer.echo(line)


def _job_data(info: Any) -> dict[str, Any]:
    data = dataclasses.asdict(info)
    data["fields"] = dict(info.fields)
    return data


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
    _need_fleet()
    from pymgr.fleet.keys import keygen as make

    try:
        private, public = make(directory, key_id)
    except OSError as exc:
        _fail(f"cannot write the key pair in {directory}: {exc.strerror or exc}")
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
KeyIdOpt = Annotated[
    str | None,
    typer.Option("--key-id", metavar="ID", envvar="PYMGR_FLEET_KEY_ID", help="The signing key's id."),
]
SigningKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--signing-key", metavar="FILE", envvar="PYMGR_FLEET_SIGNING_KEY", help="The private key (ID.key)."
    ),
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
        _fail("give --host ID or --tag TAG (exactly one)", 2)
    if key_id is None or signing_key is None:
        _fail("submitting needs --key-id ID and --signing-key FILE (pymgr fleet keygen makes a pair)", 2)
    try:
        values = _build_params(params or [], lambda: None, f"fleet job {type}")
    except _UsageError as exc:
        _fail(str(exc), 2)
    kind: Literal["task", "action"] = "action" if action else "task"
    with _client(redis_url, config, key_id, signing_key) as client:
        try:
            job_id = client.submit(type, values, host=host, tag=tag, key=key, kind=kind)
            info = client.wait_received(job_id, timeout_s=timeout)
            if wait:
                info = client.wait(job_id, timeout_s=math.inf)
        except ValueError as exc:
            _fail(str(exc), 2)
        except TimeoutError as exc:
            _fail(f"{exc}; the job stays queued", EXIT_NOT_TAKEN)
    who = info.received_by or info.fields.get("refused_by", "?")
    line = f"job {job_id}: {info.state} by {who}" + (f": {info.error}" if info.error else "")
    _print(ctx, _job_data(info), [line])
    if info.state == "refused" or (wait and info.state != "succeeded"):
        raise typer.Exit(EXIT_JOB_FAILED)


@fleet_app.command()
def show(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="The job's id, as submit printed it.")],
    redis_url: RedisOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A job as its hash shows it: state, host, run, exit, error."""
    with _client(redis_url, config) as client:
        try:
            info = client.show(job_id)
        except LookupError as exc:
            _fail(str(exc))
    lines = [f"{name}: {value}" for name, value in sorted(info.fields.items())]
    _print(ctx, _job_data(info), lines)


@fleet_app.command()
def hosts(ctx: typer.Context, redis_url: RedisOpt = None, config: ConfigOpt = None) -> None:
    """Every host that has sent a heartbeat: alive or not, tags, running jobs."""
    with _client(redis_url, config) as client:
        found = client.hosts()
    lines = [
        f"{h.id}\t{'alive' if h.alive else 'silent'}\ttags={','.join(h.tags) or '-'}\trunning={h.running if h.alive else '-'}"
        for h in found
    ]
    _print(ctx, [dataclasses.asdict(h) for h in found], lines or ["no host has sent a heartbeat"])
