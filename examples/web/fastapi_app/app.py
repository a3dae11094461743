"""A FastAPI back end that runs pymgr actions and scan tasks for its admin page.

Run it (docs/web-apps.md has the whole walk-through):

    pip install /path/to/pymgr -r requirements.txt
    PYMGR_SOCKET=/path/to/pymgr/var/pymgr.sock uvicorn app:app --port 8000

What it shows:
- one ``AsyncClient`` for the whole process, opened and closed with the app
  (``lifespan``): it keeps a pool of connections to the daemon's socket;
- the daemon's results as typed objects (``TaskRecord``, ``Event``), of which
  the page gets only what it shows (``ScanView``);
- each pymgr error class turned into the HTTP answer a browser should get
  (``pymgr_error``): 403, 404, 409, 429 with ``Retry-After``, 503 when the
  daemon is down;
- live progress relayed from the daemon's ``/v1/events`` to the browser as
  server-sent events, resuming where the browser left off (``Last-Event-ID``);
- a task's log streamed as it grows.

The browser never talks to the daemon: it talks to this app, and the daemon
decides what this app (the user it runs as) may do.

What it needs from the daemon: its user may connect to the socket (the
socket's group, ``[http] socket_group``, or the daemon's own user), and a
policy rule lets that user call ``demo.*`` and ``tasks.read``, and
``tasks.start:scan``, ``tasks.stop:scan``, ``tasks.logs:scan``: the "web back
end" rule of examples/demo.toml, for ``group:www-data``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from pymgr.client import AsyncClient, ConnectionFailed, Event, JsonValue, TaskRecord, TaskState
from pymgr.errors import PymgrError, RateLimited

log = logging.getLogger("uvicorn.error")  # uvicorn prints this logger's lines

PAGE = Path(__file__).with_name("page.html")
#: The daemon's error statuses a browser gets as they are; any other error
#: (400 aside, which is the browser's own mistake) is the back end's problem: 502.
PASSED_ON = {400, 403, 404, 409, 429, 503}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One client per process, not per request: it holds a connection pool.
    # With no argument it finds the socket itself: $PYMGR_SOCKET, ./var/pymgr.sock
    # (a development daemon's), or /run/pymgr/pymgr.sock (an installed one).
    app.state.pymgr = AsyncClient()
    yield
    await app.state.pymgr.close()


def json_posts_only(request: Request) -> None:
    """Refuse a POST that is not JSON: another site's page cannot send JSON here without
    asking first (a CORS preflight this app never grants), so it cannot start or stop anything."""
    if (
        request.method == "POST"
        and request.headers.get("content-type", "").split(";")[0] != "application/json"
    ):
        raise HTTPException(415, "send JSON (Content-Type: application/json)")


app = FastAPI(lifespan=lifespan, dependencies=[Depends(json_posts_only)])


def pymgr(request: Request) -> AsyncClient:
    client: AsyncClient = request.app.state.pymgr
    return client


class ScanView(BaseModel):
    """What the page shows of a task record: no more (a record also holds the command line,
    pids and who started the run), and it is this app's answer model in its OpenAPI schema."""

    id: int
    key: str | None
    state: TaskState
    progress: float | None
    message: str | None
    exit_code: int | None
    ended: bool

    @classmethod
    def of(cls, record: TaskRecord) -> ScanView:
        return cls(
            id=record.id,
            key=record.key,
            state=record.state,
            progress=record.progress,
            message=record.progress_message,
            exit_code=record.exit_code,
            ended=record.is_final,
        )


def sse_message(event: Event) -> tuple[str, bool]:
    """One daemon event as a server-sent event for the browser, and whether the run has ended."""
    if event.kind == "heartbeat":
        return ": heartbeat\n\n", False  # a comment: keeps proxies from closing an idle stream
    record, update = event.record(), event.progress()
    data: JsonValue = event.data  # gap, reset: relayed as the daemon sent them
    if record is not None:
        data = ScanView.of(record).model_dump()
    elif update is not None:
        data = update.to_json()
    # A gap or reset marker has no id: the browser keeps the last one it had.
    id_line = f"id: {event.id}\n" if event.id is not None else ""
    ended = record is not None and record.is_final
    return f"{id_line}event: {event.kind}\ndata: {json.dumps(data)}\n\n", ended


@app.exception_handler(PymgrError)
async def pymgr_error(request: Request, exc: PymgrError) -> Response:
    """Every error of the daemon (or of reaching it) as the HTTP answer the browser should get."""
    if isinstance(exc, ConnectionFailed):
        # Say what is wrong without the socket path: that is for the server's log.
        status, message = 503, "the task service is not running; try again in a minute"
        log.error("pymgr: %s", exc)
    else:
        status = exc.http_status if exc.http_status in PASSED_ON else 502
        message = exc.message
    headers = {}
    if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    body = {"error": exc.code, "message": message}
    if "text/html" in request.headers.get("accept", ""):
        html = f"<!doctype html><title>{status}</title><h1>{status}</h1><p>{_escape(message)}</p>"
        return HTMLResponse(html, status_code=status, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@app.get("/", response_class=HTMLResponse)
async def page() -> str:
    return PAGE.read_text()


@app.get("/actions")
async def actions(request: Request) -> list[dict[str, str]]:
    """The actions this app may call: the daemon's policy decides, the page offers only those."""
    modules = await pymgr(request).modules(allowed=True)
    return [{"module": m.name, "action": a.name, "doc": a.doc} for m in modules for a in m.actions]


# response_model=None: an action's result is any JSON, there is no model to check it against.
@app.post("/actions/{module}/{action}", response_model=None)
async def call(request: Request, module: str, action: str) -> dict[str, JsonValue]:
    params = await request.json() if await request.body() else {}
    return {"result": await pymgr(request).call(module, action, params)}


class ScanStart(BaseModel):
    task_id: int = Field(ge=0)
    duration: float = Field(default=10, ge=0, le=3600)


@app.post("/scans", status_code=202)
async def start_scan(request: Request, scan: ScanStart) -> ScanView:
    # The key makes the start idempotent: a double click, a retried request or a
    # second browser tab gets the run already going instead of a second one.
    params = {"task_id": scan.task_id, "duration": scan.duration}
    record = await pymgr(request).start_task("scan", params, key=f"scan:{scan.task_id}")
    return ScanView.of(record)


@app.get("/scans/{task_id}")
async def show_scan(request: Request, task_id: int) -> ScanView:
    return ScanView.of(await pymgr(request).task(task_id))


@app.post("/scans/{task_id}/stop", status_code=202)
async def stop_scan(request: Request, task_id: int) -> ScanView:
    return ScanView.of(await pymgr(request).stop_task(task_id))


@app.get("/scans/{task_id}/events")
async def scan_events(
    request: Request, task_id: int, last_event_id: int | None = Header(default=None)
) -> StreamingResponse:
    """The run's events, relayed as server-sent events until it ends.

    The browser's ``EventSource`` reconnects by itself and sends the id of the
    last event it saw as ``Last-Event-ID``; passing it on as ``since`` makes the
    daemon replay what the browser missed.
    """
    events = pymgr(request).events(task=task_id, since=last_event_id)
    # Wait for the first event before answering, so that a 403 or 404 from the
    # daemon becomes this response's status, not an error inside a 200 stream.
    first = await anext(events)
    return StreamingResponse(_sse(first, events), media_type="text/event-stream")


async def _sse(first: Event, events: AsyncGenerator[Event, None]) -> AsyncIterator[str]:
    event: Event | None = first
    try:
        while event is not None:
            message, ended = sse_message(event)
            yield message
            if ended:
                break
            event = await anext(events, None)
    finally:
        await events.aclose()  # hang up on the daemon's stream too


@app.get("/scans/{task_id}/log")
async def scan_log(request: Request, task_id: int) -> StreamingResponse:
    """The run's output as it is written, until the run ends (progress lines left out)."""
    chunks = pymgr(request).follow_logs(task_id, progress=False)
    first = await anext(chunks, b"")  # errors before the 200, as for events
    # Text a browser shows, never sniffed: a log may look like HTML.
    return StreamingResponse(
        _chain(first, chunks),
        media_type="text/plain; charset=utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk
