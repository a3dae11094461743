"""What the ``pymgr fleet`` commands share: where Redis is, the client, the options, printing.

Rules:
- These commands talk to Redis, never to a daemon: ``--redis URL``, else the
  ``[fleet]`` table of ``--config FILE`` (its ``redis_url``, ``username`` and
  ``password_file``), else ``$PYMGR_FLEET_REDIS``.
- Submitting and stopping sign with the private key of ``--signing-key FILE``
  (or ``$PYMGR_FLEET_SIGNING_KEY``) under ``--key-id`` (``$PYMGR_FLEET_KEY_ID``);
  a host's config never holds it.
- They need the fleet extra; without it each says what to install. Nothing
  of the fleet is imported until one of them runs.
- ``client_of`` turns what goes wrong with Redis into a message and an exit
  code: a URL redis-py cannot read (2), a Redis it cannot reach or that
  refuses the user (``EXIT_NO_REDIS``), any other refusal (1); never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from pymgr.cli.daemondeps import no_fleet_message

if TYPE_CHECKING:
    from pymgr.fleet.client import FleetClient

#: Exit code when no host took a job within --timeout.
EXIT_NOT_TAKEN = 3
#: Exit code of ``submit --wait`` when the job ended other than succeeded.
EXIT_JOB_FAILED = 4
#: sysexits.h EX_UNAVAILABLE, as ``pymgr`` exits when the daemon cannot be reached: Redis cannot
#: be reached, or refuses the user and password.
EXIT_NO_REDIS = 69

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


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def check_timeout(seconds: float) -> None:
    """``--timeout`` checked before anything is sent: NaN passes click's range check, and waits for ever."""
    if math.isnan(seconds):
        fail("--timeout must be a number of seconds, not nan", 2)


def need_fleet() -> None:
    missing = no_fleet_message("pymgr fleet")
    if missing is not None:
        typer.echo(missing, err=True)
        raise typer.Exit(1)


@contextmanager
def client_of(
    redis_url: str | None, config: Path | None, key_id: str | None = None, key: Path | None = None
) -> Iterator[FleetClient]:
    """A client for the Redis the options name, closed after the ``with`` block (see the module rules)."""
    need_fleet()
    import redis

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
        fail(str(exc))
    if redis_url is None:
        fail("say where Redis is: --redis URL, --config FILE (its [fleet] table) or $PYMGR_FLEET_REDIS", 2)
    where = _without_password(redis_url)
    try:
        client = FleetClient(
            redis_url, key_id=key_id, signing_key=signing_key, username=username, password=password
        )
    except ValueError as exc:
        fail(f"--redis {where}: {exc}", 2)
    try:
        with client:
            yield client
    except ValueError as exc:  # an argument the client refuses (a timeout that is not a number)
        fail(str(exc), 2)
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # a wrong password too
        fail(f"cannot reach Redis at {where}: {exc}", EXIT_NO_REDIS)
    except redis.RedisError as exc:
        fail(f"Redis at {where} refused: {exc}")


def _without_password(redis_url: str) -> str:
    """The URL to print: without the user and password it may hold (``redis://user:secret@host``)."""
    return re.sub(r"//[^/@]*@", "//", redis_url, count=1)


def _fleet_table(path: Path) -> Any:
    from pymgr.config import ConfigError, load_config

    try:
        fleet = load_config(path).fleet
    except ConfigError as exc:
        fail(str(exc))
    if fleet is None:
        fail(f"config {path} has no [fleet] table; give --redis URL")
    return fleet


def echo(ctx: typer.Context, data: Any, lines: list[str]) -> None:
    if ctx.obj is not None and ctx.obj.json:
        typer.echo(json.dumps(data, ensure_ascii=False, default=str))
    else:
        for line in lines:
            typer.echo(line)


def age(epoch_s: float | None, now: float) -> str:
    """How long ago ``epoch_s`` was, in the largest whole unit: ``4s``, ``12m``, ``3h``, ``2d``; ``-`` if unknown."""
    if epoch_s is None:
        return "-"
    seconds = max(0.0, now - epoch_s)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def job_data(info: Any) -> dict[str, Any]:
    data = dataclasses.asdict(info)
    data["fields"] = dict(info.fields)
    return data


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
