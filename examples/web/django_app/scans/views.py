"""The admin page's views: list and call actions, start, watch, follow and stop a scan.

Each view calls the daemon through the process's one client (``client.pymgr``)
and lets a pymgr error propagate: ``errors.PymgrErrorMiddleware`` answers it.

What it needs from the daemon: its user may connect to the socket (the
socket's group, ``[http] socket_group``, or the daemon's own user), and a
policy rule lets that user call ``demo.*`` and ``tasks.read``, and
``tasks.start:scan``, ``tasks.stop:scan``, ``tasks.logs:scan``: the "web back
end" rule of examples/demo.toml, for ``group:www-data``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from scans.client import pymgr, scan_view

PAGE = Path(__file__).with_name("page.html")


@require_GET
@ensure_csrf_cookie  # the page's POSTs send this cookie's token back (X-CSRFToken)
def page(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE.read_text())


@require_GET
def actions(request: HttpRequest) -> JsonResponse:
    """The actions this app may call: the daemon's policy decides, the page offers only those."""
    modules = pymgr().modules(allowed=True)
    listing = [{"module": m.name, "action": a.name, "doc": a.doc} for m in modules for a in m.actions]
    return JsonResponse(listing, safe=False)


@require_POST
def call(request: HttpRequest, module: str, action: str) -> JsonResponse:
    params = json.loads(request.body) if request.body else {}
    return JsonResponse({"result": pymgr().call(module, action, params)})


@require_POST
def start_scan(request: HttpRequest) -> JsonResponse:
    try:
        body = json.loads(request.body)
        task_id, duration = int(body["task_id"]), float(body.get("duration", 10))
    except (KeyError, TypeError, ValueError):
        return JsonResponse(
            {"error": "bad_params", "message": "send {task_id: int, duration: seconds}"}, status=400
        )
    # The key makes the start idempotent: a double click, a retried request or a
    # second browser tab gets the run already going instead of a second one.
    record = pymgr().start_task("scan", {"task_id": task_id, "duration": duration}, key=f"scan:{task_id}")
    return JsonResponse(scan_view(record), status=202)


@require_GET
def show_scan(request: HttpRequest, task_id: int) -> JsonResponse:
    """What the page polls for live progress."""
    return JsonResponse(scan_view(pymgr().task(task_id)))


@require_POST
def stop_scan(request: HttpRequest, task_id: int) -> JsonResponse:
    return JsonResponse(scan_view(pymgr().stop_task(task_id)), status=202)


@require_GET
def scan_log(request: HttpRequest, task_id: int) -> StreamingHttpResponse:
    """The run's output as it is written, until the run ends (progress lines left out)."""
    chunks = pymgr().follow_logs(task_id, progress=False)
    # Read the first chunk before answering, so that a 403 or 404 from the
    # daemon becomes this response's status, not an error inside a 200 stream.
    first = next(chunks, b"")
    # Text a browser shows, never sniffed (SecurityMiddleware adds nosniff): a log may look like HTML.
    return StreamingHttpResponse(_chain(first, chunks), content_type="text/plain; charset=utf-8")


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
