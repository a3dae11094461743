"""``pymgr fleet stop|list|logs|acl``: stop a job, list recent jobs, read or follow a job's output, ACL lines.

Registered on ``fleet_app`` by ``cli/fleet.py``; options and client from
``_fleetshared.py``. ``logs -f`` follows until the job has ended, and goes on
after a dropped connection or a Redis restart from the last entry it printed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from pymgr.cli._fleetshared import (
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

#: Exit code of ``stop`` when the job had not ended within --timeout (the stop stays queued for its host).
EXIT_NOT_ENDED = 3

JobArg = Annotated[str, typer.Argument(metavar="JOB", help="The job's id, as submit printed it.")]


def stop(
    ctx: typer.Context,
    job_id: JobArg,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the job has ended.")] = True,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, metavar="SECONDS", help="How long to wait for the end.")
    ] = 30.0,
    redis_url: RedisOpt = None,
    config: ConfigOpt = None,
    key_id: KeyIdOpt = None,
    signing_key: SigningKeyOpt = None,
) -> None:
    """Stop a job: cancel it if no host took it, else send its host a signed stop (its whole tree)."""
    check_timeout(timeout)
    if key_id is None or signing_key is None:
        fail("stopping needs --key-id ID and --signing-key FILE (the key jobs are submitted with)", 2)
    with client_of(redis_url, config, key_id, signing_key) as client:
        try:
            result = client.stop(job_id)
            info = client.show(job_id)
            if wait and result.how == "sent":
                info = client.wait(job_id, timeout_s=timeout)
        except LookupError as exc:
            fail(str(exc))
        except TimeoutError:
            fail(
                f"job {job_id} has not ended within {timeout:g} s; the stop waits for host {result.host}",
                EXIT_NOT_ENDED,
            )
    said = {
        "cancelled": "cancelled: no host had taken it, none will run it",
        "sent": f"stop sent to host {result.host}",
        "ended": f"had ended ({result.state}); nothing to stop",
    }[result.how]
    lines = [f"job {job_id}: {said}"]
    if wait and result.how == "sent":
        lines.append(f"job {job_id}: {info.state} on {result.host}")
    echo(ctx, {"stop": dataclasses.asdict(result), "job": job_data(info)}, lines)


def list_jobs(
    ctx: typer.Context,
    state: Annotated[
        str | None, typer.Option("--state", metavar="STATE", help="Only jobs in this state.")
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", metavar="ID", help="Only jobs this host took or was sent.")
    ] = None,
    tag: Annotated[str | None, typer.Option("--tag", metavar="TAG", help="Only jobs for this tag.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, metavar="N", help="At most N jobs.")] = 20,
    redis_url: RedisOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Recent jobs, newest first: id, type, target, state, host, age."""
    with client_of(redis_url, config) as client:
        try:
            found = client.jobs(state=state, host=host, tag=tag, limit=limit)
        except ValueError as exc:
            fail(str(exc), 2)
    now = time.time()
    lines = [
        "\t".join(
            [
                info.id,
                info.type or "-",
                info.target or "-",
                info.state,
                info.received_by or "-",
                age(info.submitted_at, now),
            ]
        )
        for info in found
    ]
    filtered = state is not None or host is not None or tag is not None
    none = "no job matches (the index keeps the newest jobs only)" if filtered else "no job yet"
    echo(ctx, [job_data(info) for info in found], lines or [none])


def logs(
    ctx: typer.Context,
    job_id: JobArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Follow the output until the job ends.")
    ] = False,
    progress: Annotated[
        bool,
        typer.Option(
            "--progress/--no-progress",
            help="Print the PYMGR_PROGRESS lines too (fleet show has the latest).",
        ),
    ] = True,
    redis_url: RedisOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A job's output as its capped stream holds it; -f follows it to the job's end."""
    from pymgr.keeper.progress import ProgressLineFilter

    as_json = ctx.obj is not None and ctx.obj.json
    if as_json and not progress:
        fail("--json prints the output's entries as stored; --no-progress goes without it", 2)
    # The log as the run wrote it, as `pymgr tasks logs` prints it (docs/fleet.md, "Output").
    lines = None if progress else ProgressLineFilter()
    with client_of(redis_url, config) as client:
        try:
            if not follow:
                client.show(job_id)
                chunks: Any = [_whole(client.output(job_id))]
            else:
                chunks = client.follow(job_id, on_reconnect=_reconnecting)
            for chunk in chunks:
                _write(chunk, as_json, lines)
        except LookupError as exc:
            fail(str(exc))
    if lines is not None:
        _write(_whole(lines.flush()), False, None)


def _whole(data: bytes) -> Any:
    from pymgr.fleet.results import OutputChunk

    return OutputChunk("", 0, data)


def _write(chunk: Any, as_json: bool, lines: Any) -> None:
    """One chunk: as a JSON line, or its bytes (less the progress lines when ``lines`` filters them)."""
    if as_json:
        line = {
            "entry_id": chunk.entry_id,
            "offset": chunk.offset,
            "data": chunk.data.decode("utf-8", "replace"),
        }
        typer.echo(json.dumps(line, ensure_ascii=False))
        return
    sys.stdout.buffer.write(chunk.data if lines is None else lines.feed(chunk.data))
    sys.stdout.buffer.flush()


def _reconnecting(last: str, error: Exception) -> None:
    typer.echo(f"pymgr fleet logs: Redis went away ({error}); going on after entry {last}", err=True)


def acl(
    ctx: typer.Context,
    hosts: Annotated[
        list[str], typer.Argument(metavar="HOST...", help="Each host as ID or ID:TAG,TAG (its tags).")
    ],
    submitter: Annotated[
        str, typer.Option("--submitter", metavar="NAME", help="The submitter's user: fleet-submitter-NAME.")
    ] = "console",
    reapers: Annotated[
        str,
        typer.Option(
            "--reapers",
            metavar="ID,ID",
            help="The hosts that may take the reaper lock and reap other hosts' streams; others need "
            "[fleet] reaper = false.",
        ),
    ] = "",
    password_dir: Annotated[
        Path | None,
        typer.Option(
            "--password-dir",
            metavar="DIR",
            file_okay=False,
            help="Read each user's password from DIR/USER.pass (0600); printed as its SHA-256 only.",
        ),
    ] = None,
) -> None:
    """Print the Redis ACL SETUSER lines that confine each host to its own keys, and a submitter's."""
    need_fleet()
    from pymgr.fleet.acl import HostSpec, acl_lines, host_user, submitter_user
    from pymgr.fleet.keys import FleetKeyError, read_secret_file

    reaper_ids = {name for name in reapers.split(",") if name}
    try:
        specs = [HostSpec.parse(text) for text in hosts]
        submitter_user(submitter)
        lines = acl_lines(specs, submitter, reapers=reaper_ids)
    except ValueError as exc:
        fail(str(exc), 2)
    passwords = {}
    if password_dir is not None:
        users = [host_user(spec.id) for spec in specs] + [submitter_user(submitter)]
        try:
            passwords = {user: read_secret_file(password_dir / f"{user}.pass") for user in users}
        except FleetKeyError as exc:
            fail(str(exc))
        lines = acl_lines(specs, submitter, passwords, reaper_ids)
    if not reaper_ids:
        typer.echo("note: no --reapers: no host may mark dead hosts' pinned jobs lost", err=True)
    echo(ctx, {"lines": lines}, lines)
