"""The console's pages and streams against a real daemon: what a person may do, starting and stopping
a scan, its events and its log, and the one subscription the console holds for every browser."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from bench import task_history
from pymgr.client import Client
from pymgr.errors import Forbidden
from tests.conftest import wait_for
from tests.console.conftest import Console, form_token


def _start_scan(http: httpx.Client, **params: str) -> httpx.Response:
    token = form_token(http.get("/tasks").text)
    return http.post("/tasks", data={"csrf": token, "type": "scan", "task_id": "7", **params})


def _sse_events(
    http: httpx.Client, path: str, until: str, headers: dict[str, str] | None = None
) -> list[tuple[str, str, str]]:
    """(event, id, data) of an SSE stream, read until an event whose data contains ``until``."""
    got: list[tuple[str, str, str]] = []
    with http.stream("GET", path, headers=headers or {}) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        event, ident, data = "", "", []
        for line in reply.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("id: "):
                ident = line[4:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and (event or data):
                got.append((event, ident, "\n".join(data)))
                if until in got[-1][2] or until == event:
                    return got
                event, ident, data = "", "", []
    return got


def test_an_action_the_person_may_not_call_is_not_offered_and_forcing_it_is_403(console: Console) -> None:
    with closing(console.login("bob")) as http:
        page = http.get("/actions").text
        assert (
            "demo.whoami" in page and "demo.echo" not in page and "Start scan" not in http.get("/tasks").text
        )
        token = form_token(page)
        forced = http.post("/actions/demo/echo", data={"csrf": token})
        assert forced.status_code == 403 and "You may not call demo.echo" in forced.text
        forced = http.post("/tasks", data={"csrf": token, "type": "scan", "task_id": "1"})
        assert forced.status_code == 403 and "You may not start task type &#39;scan&#39;" in forced.text
        me = http.post("/actions/demo/whoami", data={"csrf": token}, headers={"hx-request": "true"})
        assert me.status_code == 200 and "console:bob" in me.text and "<html" not in me.text


def test_a_scan_started_from_its_form_runs_for_the_person_and_its_events_reach_the_page(
    console: Console,
) -> None:
    with closing(console.login("alice")) as http:
        started = _start_scan(http, duration="0.6")
        assert started.status_code == 303
        task_id = int(started.headers["location"].rsplit("/", 1)[1])
        with Client(socket=console.daemon.socket) as daemon:
            assert daemon.task(task_id).started_by["person"] == "console:alice"
        events = _sse_events(http, "/events", '"state": "succeeded"')
        progress = [json.loads(d) for e, _, d in events if e == "progress"]
        assert any(p["id"] == task_id for p in progress)
        final = json.loads(events[-1][2])
        assert final["id"] == task_id and f'<tr id="task-{task_id}">' in final["row"]
        page = http.get(f"/tasks/{task_id}").text
        assert "succeeded" in page and "console:alice" in page


def test_bad_fields_are_shown_beside_them_and_nothing_starts(console: Console) -> None:
    with closing(console.login("alice")) as http:
        reply = _start_scan(http, duration="soon", exit_code="300")
        assert reply.status_code == 400
        assert "Duration must be a number, like 2.5, not &#39;soon&#39;" in reply.text
        assert "Exit Code must be at most 255" in reply.text
        assert reply.text.count('<tr id="task-') == 0


def test_stop_asks_first_then_ends_the_run(console: Console) -> None:
    with closing(console.login("alice")) as http:
        task_id = int(_start_scan(http, duration="60").headers["location"].rsplit("/", 1)[1])
        confirm = http.get(f"/tasks/{task_id}/stop")
        assert confirm.status_code == 200 and f"Stop task {task_id}?" in confirm.text
        stopped = http.post(f"/tasks/{task_id}/stop", data={"csrf": form_token(confirm.text)})
        assert stopped.status_code == 303
        with Client(socket=console.daemon.socket) as daemon:
            assert daemon.wait(task_id, timeout_s=20).state == "stopped"


def test_the_log_follows_and_resumes_from_the_last_event_id(console: Console) -> None:
    with closing(console.login("alice")) as http:
        task_id = int(_start_scan(http, duration="0.5").headers["location"].rsplit("/", 1)[1])
        whole = _sse_events(http, f"/tasks/{task_id}/log/stream", "end")
        assert whole[-1][0] == "end"
        text = "".join(d for e, _, d in whole if e == "log")
        first_id = next(i for e, i, _ in whole if e == "log")
        rest = _sse_events(http, f"/tasks/{task_id}/log/stream", "end", {"last-event-id": first_id})
        resumed = "".join(d for e, _, d in rest if e == "log")
        assert text.endswith(resumed) and len(resumed) < len(text)
        download = http.get(f"/tasks/{task_id}/log")
        assert download.headers["content-disposition"] == f'attachment; filename="task-{task_id}.log"'


def test_many_browsers_share_one_subscription_to_the_daemon(console: Console) -> None:
    hub = console.app.state.console.hub
    wait_for(lambda: hub.connected)
    with closing(console.login("alice")) as http:
        streams = [http.stream("GET", "/events") for _ in range(5)]
        for s in streams:
            s.__enter__()
        try:
            wait_for(lambda: hub.watching == 5)
            assert hub.daemon_streams_opened == 1
            assert re.search(r"5 browser stream\(s\)", http.get("/status").text)
        finally:
            for s in streams:
                s.__exit__(None, None, None)


def test_the_audit_page_names_the_person_of_each_call_and_is_the_policys_to_allow(console: Console) -> None:
    with closing(console.login("alice")) as http:
        token = form_token(http.get("/actions").text)
        assert http.post("/actions/demo/echo", data={"csrf": token}).status_code == 200
        page = http.get("/audit", params={"person": "alice", "action": "demo.*"})
        assert page.status_code == 200
        row = re.search(
            r"<tr><td>[^<]+</td><td>console:alice</td><td>([^<]*)</td><td>demo.echo</td>\s*<td>ok</td>",
            page.text,
        )
        assert row, page.text
        assert "console:bob" not in page.text
    with closing(console.login("bob")) as http:
        refused = http.get("/audit")
        assert refused.status_code == 403 and "console:bob" in refused.text


def test_the_status_page_counts_every_run_by_state_not_the_newest_page(
    start_console: Callable[..., Console], tmp_path: Path
) -> None:
    task_history.seed(tmp_path / "d" / "state", 600)  # the daemon's store, before it starts
    console = start_console()
    with closing(console.login("bob")) as bob, Client(socket=console.daemon.socket) as daemon:
        page = bob.get("/status").text
        with pytest.raises(Forbidden, match="tasks"):  # as for the list: a person without tasks.read
            daemon.acting_for("carol").task_counts()
    shown = dict(re.findall(r'<a href="/tasks\?state=(\w+)">\w+</a></td><td>(\d+)</td>', page))
    assert shown == {
        "queued": "0",
        "running": "0",
        "succeeded": "510",
        "failed": "60",
        "stopped": "30",
        "timed_out": "0",
        "lost": "0",
    }, page
    assert '<th scope="row">all</th><td>600</td>' in page
