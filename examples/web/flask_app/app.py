"""A Flask back end that runs pymgr actions and scan tasks for its admin page.

Run it (docs/web-apps.md has the whole walk-through):

    pip install /path/to/pymgr -r requirements.txt
    PYMGR_SOCKET=/path/to/pymgr/var/pymgr.sock flask --app app run --port 8000

What it shows:
- one blocking ``Client`` for the whole process, made when the app is
  (``create_app``); Flask's threads share it (httpx clients are thread-safe);
- the daemon's results as typed objects (``TaskRecord``), of which the page
  gets only what it shows (``scan_view``);
- each pymgr error class turned into the HTTP answer a browser should get
  (``pymgr_error``): 403, 404, 409, 429 with ``Retry-After``, 503 when the
  daemon is down;
- live progress by polling a small JSON endpoint (``GET /scans/ID``);
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

from collections.abc import Iterator
from html import escape
from pathlib import Path
from typing import TypedDict

from flask import Flask, Response, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from pymgr.client import Client, ConnectionFailed, TaskRecord, TaskState
from pymgr.errors import PymgrError, RateLimited

PAGE = Path(__file__).with_name("page.html")
#: The daemon's error statuses a browser gets as they are; any other error
#: (400 aside, which is the browser's own mistake) is the back end's problem: 502.
PASSED_ON = {400, 403, 404, 409, 429, 503}


class ScanView(TypedDict):
    """What the page shows of a task record (its JSON answer for a scan)."""

    id: int
    key: str | None
    state: TaskState
    progress: float | None
    message: str | None
    exit_code: int | None
    ended: bool


def scan_view(record: TaskRecord) -> ScanView:
    """No more than the page shows: a record also holds the command line, pids and who started the run."""
    return {
        "id": record.id,
        "key": record.key,
        "state": record.state,
        "progress": record.progress,
        "message": record.progress_message,
        "exit_code": record.exit_code,
        "ended": record.is_final,
    }


def pymgr() -> Client:
    client: Client = current_app.extensions["pymgr"]
    return client


def pymgr_error(exc: PymgrError) -> Response:
    """Every error of the daemon (or of reaching it) as the HTTP answer the browser should get."""
    if isinstance(exc, ConnectionFailed):
        # Say what is wrong without the socket path: that is for the server's log.
        status, message = 503, "the task service is not running; try again in a minute"
        current_app.logger.error("pymgr: %s", exc)
    else:
        status = exc.http_status if exc.http_status in PASSED_ON else 502
        message = exc.message
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        html = f"<!doctype html><title>{status}</title><h1>{status}</h1><p>{escape(message)}</p>"
        response = Response(html, status=status, mimetype="text/html")
    else:
        response = jsonify({"error": exc.code, "message": message})
        response.status_code = status
    if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


def create_app() -> Flask:
    app = Flask(__name__)
    # One client per process, not per request: it holds a connection pool.
    # With no argument it finds the socket itself: $PYMGR_SOCKET, ./var/pymgr.sock
    # (a development daemon's), or /run/pymgr/pymgr.sock (an installed one).
    app.extensions["pymgr"] = Client()
    app.register_error_handler(PymgrError, pymgr_error)

    @app.before_request
    def json_posts_only() -> None:
        """Refuse a POST that is not JSON: another site's page cannot send JSON here without
        asking first (a CORS preflight this app never grants), so it cannot start or stop anything."""
        if request.method == "POST" and not request.is_json:
            abort(415, "send JSON (Content-Type: application/json)")

    @app.get("/")
    def page() -> str:
        return PAGE.read_text()

    @app.get("/actions")
    def actions() -> list[dict[str, str]]:
        """The actions this app may call: the daemon's policy decides, the page offers only those."""
        modules = pymgr().modules(allowed=True)
        return [{"module": m.name, "action": a.name, "doc": a.doc} for m in modules for a in m.actions]

    @app.post("/actions/<module>/<action>")
    def call(module: str, action: str) -> ResponseReturnValue:
        params = request.get_json() if request.data else {}
        return {"result": pymgr().call(module, action, params)}

    @app.post("/scans")
    def start_scan() -> ResponseReturnValue:
        body = request.get_json()
        try:
            task_id, duration = int(body["task_id"]), float(body.get("duration", 10))
        except (KeyError, TypeError, ValueError):
            return {"error": "bad_params", "message": "send {task_id: int, duration: seconds}"}, 400
        # The key makes the start idempotent: a double click, a retried request or a
        # second browser tab gets the run already going instead of a second one.
        params = {"task_id": task_id, "duration": duration}
        return scan_view(pymgr().start_task("scan", params, key=f"scan:{task_id}")), 202

    @app.get("/scans/<int:task_id>")
    def show_scan(task_id: int) -> ScanView:
        """What the page polls for live progress."""
        return scan_view(pymgr().task(task_id))

    @app.post("/scans/<int:task_id>/stop")
    def stop_scan(task_id: int) -> ResponseReturnValue:
        return scan_view(pymgr().stop_task(task_id)), 202

    @app.get("/scans/<int:task_id>/log")
    def scan_log(task_id: int) -> Response:
        """The run's output as it is written, until the run ends (progress lines left out)."""
        chunks = pymgr().follow_logs(task_id, progress=False)
        # Read the first chunk before answering, so that a 403 or 404 from the
        # daemon becomes this response's status, not an error inside a 200 stream.
        first = next(chunks, b"")
        # Text a browser shows (Flask adds charset=utf-8), never sniffed: a log may look like HTML.
        return Response(
            _chain(first, chunks), mimetype="text/plain", headers={"X-Content-Type-Options": "nosniff"}
        )

    return app


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


app = create_app()
