"""``pymgr tasks ...``: list, show, start, stop, types, logs, watch."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from pymgr.cli._params import _build_params, _find_schema
from pymgr.cli._render import _render_record, _render_schemas, _render_tasks
from pymgr.cli._render import _printable, percent, utc_now
from pymgr.cli._session import _run, _session, _wire
from pymgr.client import Client, Event, TaskRecord, WaitTimeout
from pymgr.keeper.progress import ProgressLineFilter
from pymgr.errors import ParamsInvalid, Unavailable

tasks_app = typer.Typer(
    help="Background tasks: list, show, start, stop, types, logs, watch.", no_args_is_help=True
)


@tasks_app.command("list")
def tasks_list(
    ctx: typer.Context,
    state: Annotated[
        str | None, typer.Option("--state", help="queued, running, succeeded, failed, ...")
    ] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only tasks of this type.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Only tasks with this key.")] = None,
    started_by: Annotated[
        str | None,
        typer.Option("--started-by", help="Only tasks started by this person (console:alice) or user."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, help="Tasks a page (default: the daemon's [tasks] list_limit)."),
    ] = None,
    before: Annotated[
        int | None, typer.Option("--before", min=1, help="Only tasks older than this id.")
    ] = None,
) -> None:
    """List task runs, newest first, a page at a time (the next page's option is printed on stderr)."""
    _run(
        ctx,
        lambda client: client.tasks(
            state=state, type=type_, key=key, limit=limit, before=before, started_by=started_by
        ),
        _render_page,
    )


def _render_page(records: list[dict[str, Any]]) -> Any:
    """The page's table, and on stderr how to ask for the older records (an empty page is past the end)."""
    if records:
        typer.echo(f"older tasks: the same command with --before {records[-1]['id']}", err=True)
    return _render_tasks(records)


@tasks_app.command("show")
def tasks_show(ctx: typer.Context, task_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Show one task run's full record."""
    _run(ctx, lambda client: client.task(task_id), _render_record)


@tasks_app.command("start")
def tasks_start(
    ctx: typer.Context,
    task_type: Annotated[
        str, typer.Argument(metavar="TYPE", help="The task type (see `pymgr tasks types`).")
    ],
    params: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="NAME=VALUE|NAME:=JSON...", help="Parameters, typed by the task type's schema."
        ),
    ] = None,
    key: Annotated[str | None, typer.Option("--key", help="Idempotency key, e.g. scan:1.")] = None,
) -> None:
    """Start a task run; prints its record at once."""

    def request(client: Client) -> Any:
        schema = lambda: _find_schema(_wire(client.task_types()), task_type)  # noqa: E731
        return client.start_task(
            task_type, _build_params(params or [], schema, f"task type {task_type}"), key=key
        )

    _run(ctx, request, _render_record)


@tasks_app.command("stop")
def tasks_stop(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the run has ended; print its final record.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0, metavar="SECONDS", help="How long --wait waits.")
    ] = 60.0,
) -> None:
    """Stop a task run (its whole process tree); prints its record (with --wait, the final one)."""

    def request(client: Client) -> Any:
        record = client.stop_task(task_id)
        return _wait_final(client, record, timeout) if wait else record

    _run(ctx, request, _render_record)


def _wait_final(client: Client, record: TaskRecord, timeout_s: float) -> TaskRecord:
    """The run's final record; ``Unavailable`` if it has not ended after ``timeout_s``."""
    if record.is_final:
        return record
    try:
        return client.wait(record.id, timeout_s)
    except WaitTimeout as exc:
        raise Unavailable(
            f"task {record.id} is still {exc.last_state or record.state} after {timeout_s:g} s; "
            "see it with: pymgr tasks show ID (or wait longer with --timeout SECONDS)",
            details={"task": record.to_json()},
        ) from None


@tasks_app.command("types")
def tasks_types(ctx: typer.Context) -> None:
    """List the task types a client may start."""
    _run(ctx, Client.task_types, lambda types: _render_schemas("type", types))


@tasks_app.command("logs")
def tasks_logs(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new output until the task ends.")
    ] = False,
    offset: Annotated[
        int | None,
        typer.Option("--offset", min=0, help="Start at this byte of the log (default: its start)."),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Print the PYMGR_PROGRESS lines too.")
    ] = True,
) -> None:
    """Print a task's output (stdout and stderr), as raw bytes."""
    out = sys.stdout.buffer
    # Filtered here, not by the daemon: a resumed read counts the log's own bytes.
    lines = None if progress else ProgressLineFilter()
    with _session(ctx) as client:
        for chunk in _log_chunks(client, task_id, offset, follow):
            out.write(chunk if lines is None else lines.feed(chunk))
            out.flush()
    if lines is not None:
        out.write(lines.flush())
        out.flush()


def _log_chunks(client: Client, task_id: str, offset: int | None, follow: bool) -> Iterator[bytes]:
    """The log's bytes; without an explicit offset, from the oldest byte still kept (saying so on stderr)."""
    start = offset or 0
    while True:
        try:
            if not follow:
                yield client.logs(task_id, start)
                return
            for chunk in client.follow_logs(task_id, start):
                start += len(chunk)
                yield chunk
            return
        except ParamsInvalid as exc:
            kept = (exc.details or {}).get("start")
            if offset is not None or not isinstance(kept, int) or kept <= start:
                raise
            typer.echo(f"pymgr: bytes {start}-{kept - 1} of task {task_id}'s log were rotated away", err=True)
            start = kept


@tasks_app.command("watch")
def tasks_watch(ctx: typer.Context) -> None:
    """Print task events as they happen (state changes, progress) until interrupted."""
    with _session(ctx) as client:
        try:
            for event in client.events():
                line = _event_line(event, ctx.obj.json)
                if line is not None:
                    typer.echo(line)
        except KeyboardInterrupt:
            return


def _event_line(event: Event, as_json: bool) -> str | None:
    kind, data = event.kind, event.data if isinstance(event.data, dict) else {}
    if kind == "heartbeat":
        return None
    if as_json:  # the event's one shape, and ``event`` (the same as kind) that scripts read
        return json.dumps({**event.to_json(), "event": kind}, ensure_ascii=False)
    clock = utc_now()
    if kind == "gap":
        return f"{clock}  ({data.get('dropped')} event(s) missed: this terminal read too slowly)"
    progress = data.get("progress")
    text = "" if progress is None else f"  {percent(progress)}"
    if data.get("progress_message"):
        text += f" {data['progress_message']}"
    if kind == "progress":
        return _printable(f"{clock}  task {data.get('id')}  progress{text}")
    return _printable(f"{clock}  task {data.get('id')} {data.get('type')}  {data.get('state')}{text}")
