"""Logs, follow and events through a real daemon: HTTP, the client, the CLI."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from survivalhelpers import states, wait_until

from pymgr.client import AsyncClient, Client
from pymgr.errors import NotFound, ParamsInvalid
from tests.conftest import PYMGR, Daemon


@pytest.fixture
def http(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://pymgr", timeout=30
    ) as c:
        yield c


def ended(client: Client, task_id: int) -> dict[str, Any]:
    return wait_until(
        lambda: (r := states(client)[task_id])["state"] not in ("queued", "running") and r, "the end"
    )


def test_logs_by_offset(daemon: Daemon, http: httpx.Client) -> None:
    with Client(socket=daemon.socket) as client:
        task = client.start_task("echo", {"word": "hello"})
        ended(client, task.id)
        path = f"/v1/tasks/{task.id}/logs"
        reply = http.get(path)
        assert (reply.status_code, reply.content) == (200, b"hello\n")
        # The bytes the run wrote, labelled as text a browser shows (never sniffs), followed or not.
        for reply in (reply, http.get(path, params={"follow": "true"})):
            assert reply.headers["content-type"] == "text/plain; charset=utf-8"
            assert reply.headers["x-content-type-options"] == "nosniff"
        assert (reply.headers["x-pymgr-log-start"], reply.headers["x-pymgr-log-end"]) == ("0", "6")
        assert http.get(path, params={"offset": 3}).content == b"lo\n"
        assert http.get(path, params={"offset": 6}).content == b""  # exactly the end: empty, not an error
        assert client.logs(task.id, 1) == b"ello\n"
        with pytest.raises(
            ParamsInvalid, match=rf"^offset 7 is past the end of task {task.id}'s log \(6 bytes\)$"
        ):
            client.logs(task.id, 7)
        assert client.call("tasks", "logs", id=task.id, offset=2)["data"] == "llo\n"


#: Bad log requests, and the message each gets (all 400 bad_params).
BAD_LOG_QUERIES = [
    ({"offset": -1}, r"^offset: must be >= 0, not -1$"),
    ({"offset": 99}, r"^offset 99 is past the end of task \d+'s log \(\d+ bytes\)$"),
    ({"offset": "x"}, r"^bad params for tasks\.logs: offset: Input should be a valid integer"),
    ({"follow": "maybe"}, r"^follow: must be true or false, not 'maybe'$"),
    ({"tail": 1}, r"^unknown query parameter 'tail'; parameters: offset, follow$"),
]


def test_bad_log_requests(daemon: Daemon, http: httpx.Client) -> None:
    with Client(socket=daemon.socket) as client:
        task = client.start_task("echo", {"word": "w"})
        ended(client, task.id)
        for query, message in BAD_LOG_QUERIES:
            reply = http.get(f"/v1/tasks/{task.id}/logs", params=query)
            assert reply.status_code == 400 and reply.json()["error"]["code"] == "bad_params", query
            assert re.match(message, reply.json()["error"]["message"]), reply.json()


def test_an_id_of_thousands_of_digits_is_400_on_every_task_route(daemon: Daemon, http: httpx.Client) -> None:
    huge = "9" * 5000  # past the 4,300 digits int() takes: the policy's look-up of the run's type
    for method, path in [("GET", ""), ("GET", "/logs"), ("POST", "/stop")]:
        reply = http.request(method, f"/v1/tasks/{huge}{path}")
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "bad_params", (path, reply.text)
    with Client(socket=daemon.socket) as client:
        assert client.health().status == "ok"


def test_logs_of_a_missing_task_are_404(daemon: Daemon) -> None:
    with Client(socket=daemon.socket) as client, pytest.raises(NotFound, match=r"^no task with id 4242; "):
        client.logs(4242)


def test_follow_streams_until_the_run_ends(daemon: Daemon, http: httpx.Client) -> None:
    with Client(socket=daemon.socket) as client:
        task = client.start_task("scan", {"task_id": 4, "duration": 1})
        chunks = []
        with http.stream("GET", f"/v1/tasks/{task.id}/logs", params={"follow": "true"}) as reply:
            assert reply.status_code == 200
            chunks = list(reply.iter_bytes())
        assert states(client)[task.id]["state"] == "succeeded"  # the stream ended with the run
        text = b"".join(chunks).decode()
        assert "scan 4: 0%" in text and text.endswith("scan 4: 100%\nPYMGR_PROGRESS 100 scan 4\n")
        followed = b"".join(client.follow_logs(task.id, 5)).decode()
        assert followed == text[5:]


def test_events_are_server_sent_to_a_real_client(daemon: Daemon, http: httpx.Client) -> None:
    with http.stream("GET", "/v1/events") as reply:
        assert reply.headers["content-type"] == "text/event-stream"
        lines = reply.iter_lines()
        assert next(lines) == "event: heartbeat"  # subscribed: everything from here on is seen
        with Client(socket=daemon.socket) as client:
            task = client.start_task("scan", {"task_id": 6, "duration": 0.3})
        seen: list[tuple[str, dict[str, Any]]] = []
        kind = None
        for line in lines:
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in ("state", "progress"):
                data = json.loads(line[6:])
                seen.append((kind, data))
                if kind == "state" and data["id"] == task.id and data["state"] == "succeeded":
                    break
    states_seen = [d["state"] for k, d in seen if k == "state" and d["id"] == task.id]
    assert states_seen == ["queued", "running", "succeeded"]
    progress = [d["progress"] for k, d in seen if k == "progress" and d["id"] == task.id]
    assert progress and progress == sorted(progress)
    final = next(d for k, d in reversed(seen) if k == "state")
    assert (final["progress"], final["progress_message"]) == (100.0, "scan 6")


def test_client_events_iterator(daemon: Daemon) -> None:
    with Client(socket=daemon.socket) as watcher, Client(socket=daemon.socket) as client:
        events = watcher.events()
        assert next(events).kind == "heartbeat"
        task = client.start_task("echo", {"word": "x"})
        for event in events:
            if (record := event.record()) is not None and record.state == "succeeded":
                assert record.id == task.id and event.id is not None and event.id > 0
                break
        events.close()


def test_cli_logs_follow_and_watch(daemon: Daemon) -> None:
    watch = subprocess.Popen(
        [str(PYMGR), "--socket", str(daemon.socket), "tasks", "watch"], stdout=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    assert watch.stdout is not None
    reader = threading.Thread(
        target=lambda: [lines.put(line.rstrip("\n")) for line in watch.stdout], daemon=True
    )  # type: ignore[union-attr]
    reader.start()
    seen: list[str] = []

    def until(pattern: str, timeout_s: float, poke: Callable[[], object] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                if poke is not None:
                    poke()  # the watcher may not be subscribed yet: make news until it shows
                continue
            if re.search(pattern, seen[-1]):
                return
        raise AssertionError(f"{pattern!r} not printed: {seen}")

    try:
        with Client(socket=daemon.socket) as client:
            until(r"task \d+ echo\s+succeeded", 30, lambda: client.start_task("echo", {"word": "probe"}))
            task = client.start_task("scan", {"task_id": 8, "duration": 0.5})
            until(rf"task {task.id} scan\s+succeeded", 30)
    finally:
        watch.terminate()
        watch.wait(10)
        reader.join(10)
        watch.stdout.close()
    assert any(
        re.fullmatch(rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ  task {task.id} scan  running(  \d+% scan 8)?", x)
        for x in seen
    ), seen
    assert any(
        re.fullmatch(rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ  task {task.id}  progress  \d+% scan 8", x)
        for x in seen
    ), seen
    out = subprocess.run(
        [str(PYMGR), "--socket", str(daemon.socket), "tasks", "logs", "-f", str(task.id)],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.endswith(b"scan 8: 100%\nPYMGR_PROGRESS 100 scan 8\n")
    out = subprocess.run(
        [str(PYMGR), "--socket", str(daemon.socket), "tasks", "logs", "--offset", "999999", str(task.id)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and re.match(
        r"^error: bad_params: offset 999999 is past the end of task", out.stderr
    )


async def test_counts_by_state_through_http_and_both_clients(daemon: Daemon, http: httpx.Client) -> None:
    with Client(socket=daemon.socket) as client:
        ok = client.start_task("echo", {"word": "x"})
        client.wait(ok.id, timeout_s=20)
        counts = client.task_counts()
    assert counts.succeeded == 1 and counts.total == 1 and counts.by_state()["failed"] == 0
    assert list(counts.by_state()) == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "stopped",
        "timed_out",
        "lost",
    ]
    assert http.get("/v1/task-counts").json() == {"ok": True, "result": counts.to_json()}
    assert http.post("/v1/task-counts").status_code == 405
    async with AsyncClient(socket=daemon.socket) as aclient:
        assert await aclient.task_counts() == counts
