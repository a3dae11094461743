"""The example web apps of examples/web/, each in its real server, against a real daemon, over HTTP.

FastAPI under uvicorn, Flask under its own (werkzeug) server, Django under
runserver: each runs with the python of .venv-web, which holds the light
client (pymgr without its daemon extra) and the three requirements files only
(`make web-venv`; `make test` builds it first, and adds django-stubs, which
only mypy reads), so these tests also prove that the apps need nothing of the daemon's. The daemon runs from a config like
examples/demo.toml, with the demo's "web back end" rule given to the tests'
own user (the apps run as that user, not as www-data).

All three apps answer the same routes with the same JSON, so every test but
the SSE one runs against each. The last test stops the daemon (503), then
serves a strict rate limit on the same socket (429).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import EXAMPLES, READY_TIMEOUT_S, REPO, Daemon, launch_daemon, wait_for

pytestmark = pytest.mark.web

WEB = EXAMPLES / "web"
WEB_PYTHON = REPO / ".venv-web" / "bin" / "python"
if not WEB_PYTHON.exists():
    pytest.skip(
        "the example web apps run in .venv-web: make web-venv (make test does)", allow_module_level=True
    )


def _web_back_end_actions() -> list[str]:
    """The actions of the demo's "web back end" rule, which the guide tells a web app to rely on."""
    rules = tomllib.loads((EXAMPLES / "demo.toml").read_text())["policy"]["rules"]
    [rule] = [rule for rule in rules if rule["name"] == "web back end"]
    return list(rule["actions"])


def daemon_config(limits: str = "") -> str:
    return f"""
state_dir = "state"
[http]
unix_socket = "pymgr.sock"

[[policy.rules]]
name = "the web app: the demo's web back end rule, for the tests' own user"
subjects = ["owner"]
actions = {json.dumps(_web_back_end_actions())}

[modules]
# metrics: an action the rule does not allow (403).
enabled = ["demo", "tasks", "SCAN_MODULE", "metrics"]

[tasks]
stop_grace_s = 1
keeper_idle_exit_s = 1
# Two runs at once per caller: a third is a conflict (409).
max_active_per_caller = 2

[tasks.types.scan]
argv = ["{{python}}", "scan.py", "--task-id", "{{task_id}}", "--duration", "{{duration}}"]
cwd = "{EXAMPLES}"

[tasks.types.scan.params]
task_id = {{ type = "int", min = 0 }}
duration = {{ type = "float", default = 30, min = 0 }}
{limits}
"""


#: Each app: its directory and the command that serves it on a port.
SERVERS = {
    "fastapi": ("fastapi_app", ["-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "{port}"]),
    "flask": ("flask_app", ["-m", "flask", "--app", "app", "run", "--host", "127.0.0.1", "--port", "{port}"]),
    "django": ("django_app", ["manage.py", "runserver", "127.0.0.1:{port}", "--noreload"]),
}


@dataclass
class App:
    name: str
    proc: subprocess.Popen[bytes]
    http: httpx.Client
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _up(http: httpx.Client, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"the app exited with {proc.returncode}")
    try:
        return http.get("/").status_code == 200
    except httpx.TransportError:
        return False


def start_app(name: str, sock: Path, directory: Path) -> App:
    folder, args = SERVERS[name]
    port = _free_port()
    env = {**os.environ, "PYMGR_SOCKET": str(sock), "PYTHONUNBUFFERED": "1", "DJANGO_SECRET_KEY": "tests"}
    log_path = directory / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(WEB_PYTHON), *(a.format(port=port) for a in args)],
            cwd=WEB / folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    http = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"Accept": "application/json"}
    )
    try:
        wait_for(lambda: _up(http, proc), timeout_s=READY_TIMEOUT_S)
    except (AssertionError, RuntimeError):
        proc.kill()
        raise RuntimeError(f"{name} did not start:\n{log_path.read_text()}") from None
    if name == "django":  # its CSRF protection: the page's cookie, sent back as a header
        http.headers["X-CSRFToken"] = http.cookies["csrftoken"]
    return App(name, proc, http, log_path)


@dataclass
class Web:
    dir: Path
    daemon: Daemon
    apps: dict[str, App]


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    directory = tmp_path_factory.mktemp("web")
    daemon = launch_daemon(directory / "daemon", daemon_config())
    state = Web(directory, daemon, {})
    try:
        for name in SERVERS:
            state.apps[name] = start_app(name, daemon.socket, directory)
        yield state
    finally:
        for app in state.apps.values():
            app.proc.terminate()
            app.proc.wait(timeout=10)
            app.http.close()
        for running in (daemon, state.daemon):  # the last test swaps the daemon
            if running.proc.poll() is None:
                running.stop()


@pytest.fixture(params=list(SERVERS))
def app(request: pytest.FixtureRequest, web: Web) -> App:
    return web.apps[request.param]


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    return body


def _ended(app: App, task_id: int) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        view = app.http.get(f"/scans/{task_id}").json()
        return view if view["ended"] else None

    result: dict[str, Any] = wait_for(ended)
    return result


# ---------------------------------------------------------------- what the page does


def test_the_page_is_served_without_the_daemon(app: App) -> None:
    page = app.http.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "<script>" in page.text and "/scans/" in page.text


def test_lists_only_what_the_policy_allows_and_calls_it(app: App) -> None:
    listed = {f"{a['module']}.{a['action']}" for a in app.http.get("/actions").json()}
    assert {"demo.echo", "demo.whoami", "tasks.start", "tasks.stop"} <= listed
    assert "metrics.snapshot" not in listed
    reply = app.http.post("/actions/demo/echo", json={"greeting": f"hi from {app.name}"})
    assert reply.status_code == 200 and f"hi from {app.name}" in json.dumps(reply.json()["result"])


def test_a_started_scan_is_one_run_per_key_with_progress_to_the_end(app: App) -> None:
    number = 100 + list(SERVERS).index(app.name)
    first = app.http.post("/scans", json={"task_id": number, "duration": 1.0})
    again = app.http.post("/scans", json={"task_id": number, "duration": 1.0})
    assert first.status_code == again.status_code == 202
    view = first.json()
    assert again.json()["id"] == view["id"] and view["key"] == f"scan:{number}"
    seen: list[float] = []

    def progressed() -> dict[str, Any] | None:
        now = app.http.get(f"/scans/{view['id']}").json()
        seen.append(now["progress"] or 0)
        return now if now["ended"] else None

    end = wait_for(progressed)
    assert end["state"] == "succeeded" and end["progress"] == 100 and end["exit_code"] == 0
    assert seen == sorted(seen)
    log = app.http.get(f"/scans/{view['id']}/log")
    assert log.status_code == 200 and f"scan {number}: 100%" in log.text
    assert log.headers["content-type"] == "text/plain; charset=utf-8"  # shown as text,
    assert log.headers["x-content-type-options"] == "nosniff"  # even if it looks like HTML
    assert "PYMGR_PROGRESS" not in log.text


def test_the_log_is_followed_live_until_a_stop_ends_the_run(app: App) -> None:
    number = 110 + list(SERVERS).index(app.name)
    view = app.http.post("/scans", json={"task_id": number, "duration": 60}).json()
    with app.http.stream("GET", f"/scans/{view['id']}/log") as log:
        assert log.status_code == 200
        chunks = log.iter_text()
        text = ""
        while text.count("\n") < 3:  # lines arrive while the run goes on
            text += next(chunks)
        stopped = app.http.post(f"/scans/{view['id']}/stop", json={})
        assert stopped.status_code == 202 and stopped.json()["id"] == view["id"]
        text += "".join(chunks)  # the stream ends with the run
    assert f"scan {number}:" in text
    assert _ended(app, view["id"])["state"] == "stopped"


def test_the_fastapi_app_relays_events_and_resumes_after_the_last_id(web: Web) -> None:
    app = web.apps["fastapi"]
    _error(app.http.get("/scans/999999/events"), 404, "not_found")  # the status, not an error in a stream
    view = app.http.post("/scans", json={"task_id": 120, "duration": 1.0}).json()
    events = _sse(app.http, f"/scans/{view['id']}/events")
    assert events[-1]["event"] == "state" and events[-1]["data"]["state"] == "succeeded"
    progress = [e["data"]["progress"] for e in events if e["event"] == "progress"]
    assert progress and progress[-1] == 100 and progress == sorted(progress)
    middle = events[len(events) // 2]
    resumed = _sse(app.http, f"/scans/{view['id']}/events", {"Last-Event-ID": middle["id"]})
    assert resumed and [e["id"] for e in resumed] == [
        e["id"] for e in events if int(e["id"]) > int(middle["id"])
    ]


def _sse(http: httpx.Client, path: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The events of one SSE response (it ends when the run does), comments left out."""
    text = http.get(path, headers={"Accept": "text/event-stream", **(headers or {})}).text
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if fields:
            events.append(
                {"id": fields.get("id"), "event": fields["event"], "data": json.loads(fields["data"])}
            )
    return events


def test_the_django_command_starts_and_watches_a_scan(web: Web) -> None:
    out = _manage(web, "pymgr_scan", "130", "--duration", "0.5")
    assert out.returncode == 0, out.stderr
    assert "scan:130" in out.stdout and "100 %" in out.stdout and out.stdout.endswith("succeeded\n")


def test_the_django_command_waits_quietly_within_its_timeout(web: Web) -> None:
    done = _manage(web, "pymgr_scan", "132", "--duration", "0.5", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "%" not in done.stdout and done.stdout.endswith("succeeded\n")
    late = _manage(web, "pymgr_scan", "133", "--duration", "60", "--quiet", "--timeout", "0.5")
    run = int(re.match(r"run (\d+) ", late.stdout)[1])  # type: ignore[index]
    try:
        assert late.returncode == 1 and f"task {run} did not end within 0.5 s" in late.stderr
    finally:
        web.apps["django"].http.post(f"/scans/{run}/stop", json={})
        assert _ended(web.apps["django"], run)["state"] == "stopped"


def _manage(web: Web, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYMGR_SOCKET": str(web.daemon.socket), "DJANGO_SECRET_KEY": "tests"}
    return subprocess.run(
        [str(WEB_PYTHON), "manage.py", *args],
        cwd=WEB / "django_app",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---------------------------------------------------------------- each error class, as the browser gets it


def test_a_denied_action_is_403_as_json_or_a_page(app: App) -> None:
    body = _error(app.http.post("/actions/metrics/snapshot", json={}), 403, "forbidden")
    assert "metrics.snapshot" in body["message"]
    page = app.http.post("/actions/metrics/snapshot", json={}, headers={"Accept": "text/html"})
    assert page.status_code == 403 and page.headers["content-type"].startswith("text/html")
    assert "<h1>403</h1>" in page.text


def test_a_start_without_a_scan_number_is_400(app: App) -> None:
    assert app.http.post("/scans", json={"duration": 1}).status_code in (400, 422)  # FastAPI says 422


def test_an_unknown_task_is_404(app: App) -> None:
    _error(app.http.get("/scans/999999"), 404, "not_found")
    _error(app.http.get("/scans/999999/log"), 404, "not_found")
    _error(app.http.post("/scans/999999/stop", json={}), 404, "not_found")


def test_a_start_past_the_cap_is_409(app: App) -> None:
    base = 140 + 10 * list(SERVERS).index(app.name)
    running = [app.http.post("/scans", json={"task_id": base + i, "duration": 60}).json() for i in range(2)]
    try:
        body = _error(app.http.post("/scans", json={"task_id": base + 2, "duration": 60}), 409, "conflict")
        assert "max_active_per_caller" in body["message"]
    finally:
        for view in running:
            app.http.post(f"/scans/{view['id']}/stop", json={})
            _ended(app, view["id"])


def test_another_sites_form_cannot_stop_a_run(app: App) -> None:
    """What a form on another site can send: no JSON, no CSRF token, no cookie of this app."""
    with httpx.Client(base_url=app.http.base_url) as elsewhere:
        response = elsewhere.post("/scans/1/stop", content=b"", headers={"Content-Type": "text/plain"})
    assert response.status_code == (403 if app.name == "django" else 415)  # Django: its CSRF check


def test_a_daemon_down_is_503_then_a_rate_limit_is_429_with_retry_after(web: Web) -> None:
    web.daemon.stop()
    for app in web.apps.values():
        body = _error(app.http.get("/actions"), 503, "unavailable")
        assert body["message"] == "the task service is not running; try again in a minute"
        assert str(web.daemon.socket) not in body["message"]  # paths are for the server's log
    down = _manage(web, "pymgr_scan", "131")
    assert down.returncode == 1 and "pymgr: cannot reach pymgr" in down.stderr
    # The same socket, a daemon that allows a burst of 2 and then one request every 20 s.
    web.daemon = launch_daemon(web.daemon.dir, daemon_config("[limits]\nrate_per_s = 0.05\nrate_burst = 2"))
    for app in web.apps.values():
        response = wait_for(lambda app=app: (r := app.http.get("/actions")).status_code == 429 and r, 10)
        _error(response, 429, "rate_limited")
        assert 1 <= int(response.headers["Retry-After"]) <= 20


# ---------------------------------------------------------------- the guide shows the apps' own code


GUIDE = REPO / "docs" / "web-apps.md"


def test_every_line_of_code_in_the_guide_is_in_an_app() -> None:
    sources = "\n".join(path.read_text() for path in WEB.rglob("*.py"))
    app_lines = {line.strip() for line in sources.splitlines()}
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        for line in block.splitlines():
            assert line.strip() in app_lines | {"", "..."}, f"not in examples/web: {line!r}"


def test_every_file_the_guide_links_exists() -> None:
    links = re.findall(r"\]\((\.\./examples/[^)#]+)\)", GUIDE.read_text())
    assert links
    for link in links:
        assert (GUIDE.parent / link).exists(), link
