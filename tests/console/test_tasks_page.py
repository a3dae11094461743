"""The tasks page over HTTP, against a real daemon: its filters (a person's runs among them), its
pages by the daemon's cursor, durations and how a run ended as the server writes them (the page
works without JavaScript), and the Audit link only for people the policy lets read the audit."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import closing

import httpx
import pydantic
import pytest

from pymgr.client import Client
from pymgr.console.config import ConsoleConfig
from tests.conftest import wait_for
from tests.console.conftest import Console, form_token
from tests.console.test_console_pages import _sse_events

ROW = re.compile(r'<tr id="task-(\d+)">')


def _rows(page: str) -> list[int]:
    return [int(n) for n in ROW.findall(page)]


def _start(http: httpx.Client, task_id: int, **params: str) -> int:
    token = form_token(http.get("/tasks").text)
    data = {"csrf": token, "type": "scan", "task_id": str(task_id), "duration": "0", **params}
    reply = http.post("/tasks", data=data)
    assert reply.status_code == 303, reply.text
    return int(reply.headers["location"].rsplit("/", 1)[1])


def test_filters_by_person_state_and_key_and_pages_by_the_cursor(
    start_console: Callable[..., Console],
) -> None:
    console = start_console(page_size=2)
    with closing(console.login("alice")) as alice, Client(socket=console.daemon.socket) as daemon:
        mine = [_start(alice, n) for n in range(3)]
        theirs = daemon.acting_for("carol", ["operators"]).start_task("scan", {"task_id": 9, "duration": 0})
        for task_id in [*mine, theirs.id]:
            daemon.wait(task_id, timeout_s=20)
        first = alice.get("/tasks", params={"started_by": "console:alice"}).text
        assert _rows(first) == [mine[2], mine[1]]
        assert 'value="console:alice"' in first  # the filter is kept in its field
        older = re.search(r'href="(/tasks\?[^"]+)" rel="next"', first)
        assert older and "started_by=console%3Aalice" in older.group(1), first
        second = alice.get(older.group(1).replace("&amp;", "&")).text
        assert _rows(second) == [mine[0]] and 'rel="next"' not in second and "Newest runs" in second
        assert _rows(alice.get("/tasks", params={"started_by": "console:carol"}).text) == [theirs.id]
        assert 'href="/tasks?started_by=console%3Acarol"' in alice.get("/tasks").text  # the person links
        assert _rows(alice.get("/tasks", params={"state": "queued"}).text) == []
        nobody = alice.get("/tasks", params={"started_by": "console:nobody"})
        assert nobody.status_code == 200 and "No runs match these filters" in nobody.text
        bad = alice.get("/tasks", params={"state": "sleeping"})
        assert bad.status_code == 400 and "sleeping" in bad.text


def test_a_last_page_exactly_full_links_to_no_older_page(start_console: Callable[..., Console]) -> None:
    console = start_console(page_size=2)
    with closing(console.login("alice")) as alice, Client(socket=console.daemon.socket) as daemon:
        runs = [
            daemon.acting_for("alice", ["operators"]).start_task("scan", {"task_id": n}).id for n in range(4)
        ]
        first = alice.get("/tasks").text
        assert _rows(first) == [runs[3], runs[2]]
        older = re.search(r'href="(/tasks\?before=\d+)" rel="next"', first)
        assert older, first
        second = alice.get(older.group(1)).text
        assert _rows(second) == [runs[1], runs[0]] and 'rel="next"' not in second  # nothing older to link
        assert 'rel="next"' not in alice.get("/tasks", params={"key": "none-such"}).text


def test_a_page_as_large_as_the_daemons_list_max_limit_works_and_pages(
    start_console: Callable[..., Console],
) -> None:
    console = start_console(page_size=2, daemon_tasks="list_limit = 2\nlist_max_limit = 2\n")
    with closing(console.login("alice")) as alice, Client(socket=console.daemon.socket) as daemon:
        alice_runs = daemon.acting_for("alice", ["operators"])
        runs = [alice_runs.start_task("scan", {"task_id": n}).id for n in range(3)]
        first = alice.get("/tasks")
        assert first.status_code == 200 and _rows(first.text) == [runs[2], runs[1]], first.text
        older = re.search(r'href="(/tasks\?before=\d+)" rel="next"', first.text)
        assert older, first.text
        assert _rows(alice.get(older.group(1)).text) == [runs[0]]


def test_the_page_size_is_bounded() -> None:
    with pytest.raises(pydantic.ValidationError, match="less than or equal to 1000"):
        ConsoleConfig.model_validate({"socket": "/x.sock", "users_file": "/x.json", "page_size": 1001})


def test_a_runs_duration_and_end_are_written_by_the_server(console: Console) -> None:
    with closing(console.login("alice")) as http, Client(socket=console.daemon.socket) as daemon:
        failed = _start(http, 1, exit_code="3", duration="0.3")
        assert daemon.wait(failed, timeout_s=20).exit_code == 3
        page = http.get(f"/tasks/{failed}").text
        assert re.search(r'data-ending-of="\d+">exit code 3<', page), page
        took = re.search(rf'<dd data-duration-of="{failed}" >(\d+\.\d) s</dd>', page)
        assert took and 0.3 <= float(took.group(1)) < 10, page
        running = _start(http, 2, duration="30")
        wait_for(lambda: daemon.task(running).state == "running")
        page = http.get(f"/tasks/{running}").text
        assert re.search(rf'data-duration-of="{running}" data-elapsed="[\d.]+">\d+\.\d s<', page), page
        assert f'data-ending-of="{running}">not yet<' in page
        row = re.search(rf'<tr id="task-{running}">.*?</tr>', http.get("/tasks").text, re.S)
        assert row and "data-elapsed=" in row.group(0)
        daemon.stop_task(running)
        assert daemon.wait(running, timeout_s=20).signal == "SIGTERM"
        assert f'data-ending-of="{running}">signal SIGTERM<' in http.get(f"/tasks/{running}").text


def test_the_audit_link_is_only_for_people_who_may_read_the_audit(console: Console) -> None:
    with closing(console.login("alice")) as alice:
        assert '<a href="/audit">Audit</a>' in alice.get("/tasks").text
    with closing(console.login("bob")) as bob:
        page = bob.get("/tasks").text
        assert '<a href="/status">Status</a>' in page and 'href="/audit"' not in page
        assert bob.get("/audit").status_code == 403  # the link's absence is not the guard


def test_a_log_resumed_at_a_progress_line_does_not_show_it(console: Console) -> None:
    with closing(console.login("alice")) as http, Client(socket=console.daemon.socket) as daemon:
        task_id = _start(http, 4, duration="0.3")
        daemon.wait(task_id, timeout_s=20)
        raw = daemon.logs(task_id, 0)
        at = raw.index(b"PYMGR_PROGRESS")
        assert raw[at - 1 : at] == b"\n"  # a line's start: where a resumed stream's id may point
        events = _sse_events(http, f"/tasks/{task_id}/log/stream", "end", {"last-event-id": str(at)})
        shown = "".join(data for event, _, data in events if event == "log")
        assert shown and "PYMGR_PROGRESS" not in shown
        assert shown.rstrip("\n") == daemon.logs(task_id, at, progress=False).decode().rstrip("\n")
