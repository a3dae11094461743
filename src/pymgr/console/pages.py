"""The console's pages: tasks (table, one run, start, stop) and status (the actions: ``actions_page``).

Rules:
- Every page asks the daemon as the person (``Console.person``): what the daemon refuses the person,
  the page refuses with the daemon's own status and message.
- Only what the person may call is offered (``GET /v1/modules?allowed=true``, for the person); a
  forced POST to anything else is refused by the console (403) before the daemon refuses it again.
- Forms post whole pages and work without JavaScript.
- Stopping a run (``tasks.stop``, dangerous) asks first: its page is the confirmation, and its POST
  passes ``reauth.confirmed`` (the password again after ``reauth_after_s``), as the actions page's do.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from pymgr.client import AsyncClient, TaskRecord, TaskState
from pymgr.console import forms, reauth
from pymgr.console.audit_page import audit_page
from pymgr.console.auth_routes import Refusal
from pymgr.console.sessions import Session
from pymgr.errors import PymgrError
from pymgr.keeper.progress import ProgressLineFilter

if TYPE_CHECKING:
    from pymgr.console.state import Console, Handler

STATES: tuple[str, ...] = typing.get_args(TaskState)
#: The tasks page's filters: each a ``GET /v1/tasks`` filter of the same name.
FILTERS = ("state", "type", "key", "started_by")
#: Most bytes of a log shown inside the task page (the whole log is a download).
LOG_PAGE_BYTES = 256 * 1024


def _filters(request: Request) -> dict[str, str]:
    return {k: v for k in FILTERS if (v := request.query_params.get(k, "").strip())}


def _before(request: Request) -> int | None:
    text = request.query_params.get("before", "")
    return int(text) if text.isdigit() else None


async def _startable(client: AsyncClient) -> list[tuple[str, list[forms.Field]]]:
    """The task types the person may start, each with its form."""
    listing = await client.modules(allowed=True)
    start = next((a for m in listing if m.name == "tasks" for a in m.actions if a.name == "start"), None)
    if start is None or not start.allowed or not start.task_types:
        return []
    allowed = {name for name, ok in start.task_types.items() if ok}
    return [(t.name, forms.fields_of(t.params)) for t in await client.task_types() if t.name in allowed]


async def _runs_page(
    client: AsyncClient, size: int, before: int | None = None, **filters: str
) -> tuple[list[TaskRecord], int | None]:
    """A page of runs, and the cursor of the older page (None: this is the last). A full page asks
    for one run past it, so that a last page exactly full links to no empty page (a page of
    ``size + 1`` would not do: the daemon's ``list_max_limit`` may be the console's page size)."""
    runs = await client.tasks(limit=size, before=before, **filters)
    if len(runs) < size or not await client.tasks(limit=1, before=runs[-1].id, **filters):
        return runs, None
    return runs, runs[-1].id


async def tasks_page(request: Request, console: Console, session: Session) -> Response:
    client = console.person(session)
    filters, before = _filters(request), _before(request)
    runs, older = await _runs_page(client, console.config.page_size, before, **filters)
    return console.render(
        request,
        "tasks.html",
        session=session,
        runs=runs,
        filters=filters,
        states=STATES,
        older=older,
        paged=before is not None,
        live=not filters and before is None,
        startable=await console.forms.get((session.user, session.roles), lambda: _startable(client)),
        errors={},
        values={},
        start_type=None,
    )


async def start_task(request: Request, console: Console, session: Session) -> Response:
    client = console.person(session)
    form = await request.form()
    startable = dict(await _startable(client))
    type_name = str(form.get("type", ""))
    if type_name not in startable:
        return console.render(
            request, "error.html", 403, session=session, message=f"You may not start task type {type_name!r}."
        )
    values = {k: str(v) for k, v in form.items()}
    params, errors = forms.read(startable[type_name], values)
    if not errors:
        try:
            record = await client.start_task(type_name, params)
            return RedirectResponse(f"/tasks/{record.id}", 303)
        except PymgrError as exc:
            errors = forms.daemon_errors(exc.details) or {"": str(exc)}
    runs, older = await _runs_page(client, console.config.page_size)
    return console.render(
        request,
        "tasks.html",
        400,
        session=session,
        runs=runs,
        filters={},
        states=STATES,
        older=older,
        paged=False,
        live=True,
        startable=list(startable.items()),
        errors=errors,
        values=values,
        start_type=type_name,
    )


def _task_id(request: Request) -> int:
    return int(request.path_params["task_id"])


async def task_page(request: Request, console: Console, session: Session) -> Response:
    client = console.person(session)
    record = await client.task(_task_id(request))
    try:
        raw = await client.logs(record.id, 0)
    except PymgrError:
        raw = b""
    # The live view resumes at the log's own offset (progress lines count); they are not shown. A last
    # line the filter holds (it may be a progress line still being written) is left to the live view.
    progress_lines = ProgressLineFilter()
    log = progress_lines.feed(raw)
    shown = log[-LOG_PAGE_BYTES:].decode(errors="replace")
    return console.render(
        request,
        "task.html",
        session=session,
        run=record,
        log=shown,
        log_offset=len(raw) - progress_lines.held,
        cut=len(log) > LOG_PAGE_BYTES,
        params=json.dumps(record.params, indent=2),
        started_by=record.started_by.get("person") or record.started_by.get("user") or "",
    )


async def task_log(request: Request, console: Console, session: Session) -> Response:
    task_id = _task_id(request)
    log = await console.person(session).logs(task_id, 0, progress=False)
    disposition = f'attachment; filename="task-{task_id}.log"'
    return PlainTextResponse(log.decode(errors="replace"), headers={"content-disposition": disposition})


async def stop_confirm(request: Request, console: Console, session: Session) -> Response:
    return await _stop_page(request, console, session)


async def stop_task(request: Request, console: Console, session: Session) -> Response:
    """``tasks.stop`` is dangerous: the POST is its confirmation, through the same gate as the actions
    page's (``reauth.confirmed``)."""
    refusal = await reauth.confirmed(request, console, session, await request.form())
    if refusal is not None:
        return await _stop_page(request, console, session, refusal)
    await console.person(session).stop_task(_task_id(request))
    return RedirectResponse(f"/tasks/{_task_id(request)}", 303)


async def _stop_page(
    request: Request, console: Console, session: Session, refusal: Refusal | None = None
) -> Response:
    record = await console.person(session).task(_task_id(request))
    return console.render(
        request,
        "stop.html",
        refusal.status if refusal else 200,
        session=session,
        run=record,
        ask_password=reauth.asks_password(console, session),
        reauth_after_s=console.config.reauth_after_s,
        message=refusal.message if refusal else "",
    )


async def status_page(request: Request, console: Console, session: Session) -> Response:
    client = console.person(session)
    health = await client.health()
    try:
        counts = await client.task_counts()
    except PymgrError:  # a person who may not read tasks still sees the daemon's health
        counts = None
    return console.render(
        request,
        "status.html",
        session=session,
        health=health,
        counts=counts,
        watching=console.hub.watching,
        hub_connected=console.hub.connected,
        sessions=len(console.sessions),
    )


def routes(page: Callable[..., Any]) -> list[Route]:
    def get(path: str, handler: Handler) -> Route:
        return Route(path, page(handler), methods=["GET"])

    def post(path: str, handler: Handler) -> Route:
        return Route(path, page(handler, state_changing=True), methods=["POST"])

    return [
        get("/tasks", tasks_page),
        post("/tasks", start_task),
        get("/tasks/{task_id:int}", task_page),
        get("/tasks/{task_id:int}/log", task_log),
        get("/tasks/{task_id:int}/stop", stop_confirm),
        post("/tasks/{task_id:int}/stop", stop_task),
        get("/status", status_page),
        get("/audit", audit_page),
    ]
