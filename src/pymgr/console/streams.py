"""The console's event streams to browsers: the runs' events (for the tasks pages) and a run's log.

Rules:
- ``/events`` is fed by the hub's one subscription to the daemon; a browser gets it only if the
  person may read task events (``tasks.events`` in the person's listing), checked when it opens.
- A stream ends when its session ends (checked at each event and each heartbeat, without counting
  as use: a watching page does not keep a session from its idle timeout).
- ``/tasks/N/log/stream`` follows the log as the person, without its progress lines; each chunk's SSE
  id is the log's byte offset after it, so a reconnecting EventSource (``Last-Event-ID``) resumes where it stopped
  (after ``RECONNECT_MS``, which the stream's ``retry`` asks for). ``end`` closes it.
- A heartbeat comment every ``HEARTBEAT_S`` keeps proxies from closing a quiet stream.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from pymgr.console.eventview import sse
from pymgr.console.sessions import Session
from pymgr.errors import PymgrError
from pymgr.keeper.progress import ProgressLineFilter

if TYPE_CHECKING:
    from pymgr.console.state import Console

HEARTBEAT_S = 15.0
#: How soon a browser opens a dropped log stream again (SSE ``retry``; Chromium's default is 3 s).
RECONNECT_MS = 1000
SSE_HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}


async def events(request: Request, console: Console, session: Session) -> Response:
    listing = await console.person(session).modules(allowed=True)
    if not any(m.name == "tasks" and a.name == "events" and a.allowed for m in listing for a in m.actions):
        return console.render(
            request, "error.html", 403, session=session, message="You may not watch task events."
        )
    subscriber = console.hub.subscribe()
    if subscriber is None:
        return Response("too many event streams; try again later\n", 503, headers={"retry-after": "10"})
    token, _ = console.session(request)

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b": the console's task events\n\n"
            while not subscriber.overflowed and console.sessions.peek(token) is not None:
                try:
                    yield await asyncio.wait_for(subscriber.queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    yield b": heartbeat\n\n"
        finally:
            console.hub.unsubscribe(subscriber)

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


def _resume_offset(request: Request) -> int:
    text = request.headers.get("last-event-id") or request.query_params.get("offset", "0")
    return int(text) if text.isdigit() else 0


async def log_stream(request: Request, console: Console, session: Session) -> Response:
    client = console.person(session)
    task_id = int(request.path_params["task_id"])
    await client.task(task_id)  # a run the person may not read, or none, is refused here as a page
    offset = _resume_offset(request)
    token, _ = console.session(request)

    async def stream() -> AsyncIterator[bytes]:
        position = offset
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Progress lines are left out, as on the page; the id is the log's own offset of what was
        # sent (a line the filter still holds is sent again after a resume, not lost). A resume is
        # taken to start a line: its id is after a newline, or at a held line (maybe a progress line,
        # which must stay hidden), or rarely inside a plain line, whose rest is then checked as a
        # line of its own (and, not starting with the progress word, passes as it is).
        progress_lines = ProgressLineFilter()
        try:
            yield f"retry: {RECONNECT_MS}\n\n".encode()
            async for chunk in client.follow_logs(task_id, offset):
                if console.sessions.peek(token) is None:
                    return
                position += len(chunk)
                if kept := progress_lines.feed(chunk):
                    yield sse(decoder.decode(kept), "log", position - progress_lines.held)
            yield sse(decoder.decode(progress_lines.flush(), final=True), "end", position)
        except PymgrError as exc:
            yield sse(str(exc), "failed")

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


def routes(page: Callable[..., Any]) -> list[Route]:
    return [
        Route("/events", page(events), methods=["GET"]),
        Route("/tasks/{task_id:int}/log/stream", page(log_stream), methods=["GET"]),
    ]
