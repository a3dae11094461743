"""``pymgr tasks ...``: list, show, start, stop, types."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pymgr.cli._params import _build_params, _find_schema
from pymgr.cli._render import _render_record, _render_schemas, _render_tasks
from pymgr.cli._session import _run
from pymgr.client import Client

tasks_app = typer.Typer(help="Background tasks: list, show, start, stop, types.", no_args_is_help=True)


@tasks_app.command("list")
def tasks_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option("--state", help="queued, running, succeeded, failed, ...")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Only tasks of this type.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Only tasks with this key.")] = None,
) -> None:
    """List task runs, newest first."""
    _run(ctx, lambda client: client.tasks(state=state, type=type_, key=key), _render_tasks)


@tasks_app.command("show")
def tasks_show(ctx: typer.Context, task_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Show one task run's full record."""
    _run(ctx, lambda client: client.task(task_id), _render_record)


@tasks_app.command("start")
def tasks_start(
    ctx: typer.Context,
    task_type: Annotated[str, typer.Argument(metavar="TYPE", help="The task type (see `pymgr tasks types`).")],
    params: Annotated[
        list[str] | None,
        typer.Argument(metavar="NAME=VALUE|NAME:=JSON...", help="Parameters, typed by the task type's schema."),
    ] = None,
    key: Annotated[str | None, typer.Option("--key", help="Idempotency key, e.g. scan:1.")] = None,
) -> None:
    """Start a task run; prints its record at once."""

    def request(client: Client) -> Any:
        schema = lambda: _find_schema(client.task_types(), task_type)  # noqa: E731
        return client.start_task(task_type, _build_params(params or [], schema, f"task type {task_type}"), key=key)

    _run(ctx, request, _render_record)


@tasks_app.command("stop")
def tasks_stop(ctx: typer.Context, task_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Stop a task run (its whole process tree); prints its record."""
    _run(ctx, lambda client: client.stop_task(task_id), _render_record)


@tasks_app.command("types")
def tasks_types(ctx: typer.Context) -> None:
    """List the task types a client may start."""
    _run(ctx, Client.task_types, lambda types: _render_schemas("type", types))

