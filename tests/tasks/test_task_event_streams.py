"""GET /v1/events through a real daemon: filters, the opening state, resuming from an id, bad queries."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from survivalhelpers import states, wait_until

from pymgr._sse import SseParser
from pymgr import errors
from pymgr.client import Client
from tests.conftest import BASE_CONFIG, Daemon, unix_http

#: The shape of an event wherever it shows (SSE through the client, tasks.events).
SHAPE = {"id", "kind", "time", "data"}


@pytest.fixture
def http(daemon: Daemon) -> Iterator[httpx.Client]:
    with unix_http(daemon, timeout_s=20) as client:
        yield client


def read_events(
    http: httpx.Client,
    until: Callable[[dict[str, Any]], bool],
    headers: dict[str, str] | None = None,
    then: Callable[[], object] | None = None,
    **query: Any,
) -> list[dict[str, Any]]:
    """The events of one stream, heartbeats left out, up to the first ``until`` takes.

    ``then`` runs once the first chunk (the heartbeat: subscribed) has come.
    """
    parser, seen = SseParser(), []
    deadline = time.monotonic() + 30  # a heartbeat every 15 s keeps the read timeout from firing
    with http.stream("GET", "/v1/events", params=query, headers=headers) as reply:
        assert reply.status_code == 200, reply.read()
        for chunk in reply.iter_bytes():
            assert time.monotonic() < deadline, f"not seen in 30 s: {seen}"
            if then is not None:
                then, start = None, then
                start()
            for event in parser.feed(chunk):
                if event["kind"] != "heartbeat":
                    seen.append(event)
                    if until(event):
                        return seen
    raise AssertionError(f"the stream ended before the event looked for: {seen}")


def ended_state(task_id: int) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["kind"] == "state" and e["data"]["id"] == task_id and e["data"]["state"] == "succeeded"


def test_a_run_that_ended_opens_its_stream_with_its_end(daemon: Daemon, http: httpx.Client) -> None:
    with Client(socket=daemon.socket) as client:
        task = client.start_task("echo", {"word": "x"})
        wait_until(lambda: states(client)[task.id]["state"] == "succeeded", "the end")
        last = client.call("tasks", "events", limit=1)[-1]
        assert set(last) == SHAPE
    seen = read_events(http, ended_state(task.id), task=task.id)
    assert len(seen) == 1 and seen[0]["id"] == last["id"]  # the opening: as of the newest event


def test_runs_that_end_right_at_subscription_are_never_missed(daemon: Daemon, http: httpx.Client) -> None:
    with Client(socket=daemon.socket) as client:
        for _ in range(5):  # echo ends within milliseconds: before, while or after the stream opens
            task = client.start_task("echo", {"word": "race"})
            seen = read_events(http, ended_state(task.id), task=task.id)
            assert {e["data"]["id"] for e in seen} == {task.id}


def test_type_and_key_filters_take_only_their_runs(daemon: Daemon, http: httpx.Client) -> None:
    with Client(socket=daemon.socket) as client:
        scan = client.start_task("scan", {"task_id": 1, "duration": 30})
        other = client.start_task("echo", {"word": "a"}, key="other")
        wait_until(lambda: states(client)[other.id]["state"] == "succeeded", "the other echo")
        mine: dict[str, Any] = {}
        start = lambda: mine.update(client.start_task("echo", {"word": "b"}, key="mine").to_json())  # noqa: E731
        done = lambda e: e["kind"] == "state" and e["data"]["state"] == "succeeded"  # noqa: E731
        seen = read_events(http, done, then=start, type="echo", key="mine")
        assert {e["data"]["id"] for e in seen} == {mine["id"]}
        seen = read_events(http, lambda e: e["kind"] == "progress", type="scan")
        assert {e["data"]["id"] for e in seen} == {scan.id} and seen[0]["kind"] == "state"
        client.stop_task(scan.id)


def test_client_events_take_filters_and_carry_the_one_shape(daemon: Daemon) -> None:
    with Client(socket=daemon.socket) as client:
        task = client.start_task("echo", {"word": "x"})
        events = client.events(task=task.id)
        heartbeat = next(events)
        assert heartbeat.kind == "heartbeat" and heartbeat.id is None
        for event in events:
            assert set(event.to_json()) == SHAPE and (record := event.record()) is not None
            assert record.id == task.id and isinstance(event.id, int) and event.time is not None
            assert event.time.tzinfo is not None and isinstance(event.to_json()["time"], float)
            if record.state == "succeeded":
                break
        events.close()


def test_a_reconnect_replays_what_it_missed_or_says_reset(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(BASE_CONFIG.replace("[tasks]\n", "[tasks]\nevents_history = 5\n"))
    with Client(socket=daemon.socket) as client, unix_http(daemon, timeout_s=20) as http:
        for word in ("a", "b", "c"):  # 3 events each: more than the history holds
            task = client.start_task("echo", {"word": word})
            wait_until(lambda: states(client)[task.id]["state"] == "succeeded", "the end")
        done, one = ended_state(task.id), task.id
        reset = read_events(http, done, since=1, task=one)
        assert reset[0]["kind"] == "reset" and reset[0]["data"]["since"] == 1
        oldest, last = reset[0]["data"]["oldest"], reset[0]["data"]["last"]
        assert last - oldest == 4 and [(e["kind"], e["id"]) for e in reset[1:]] == [("state", last)]
        newest = lambda e: e["id"] == last  # noqa: E731
        replayed = read_events(http, newest, headers={"Last-Event-ID": str(oldest - 1)})
        assert [e["id"] for e in replayed] == list(range(oldest, last + 1))  # just inside the bound
        assert [e["id"] for e in read_events(http, done, since=oldest - 1, task=one)] == [
            last - 2,
            last - 1,
            last,
        ]
        assert read_events(http, done, since=oldest - 2, task=one)[0]["kind"] == "reset"  # just outside it
        # The header wins over since (a browser reconnects to the same URL), and a future id is a reset.
        future = read_events(http, done, headers={"Last-Event-ID": str(last + 7)}, since=oldest, task=one)
        assert future[0]["kind"] == "reset"
        assert [e["id"] for e in read_events(http, newest, since=last - 1)] == [last]


@pytest.mark.parametrize(
    ("query", "headers", "message"),
    [
        ({"task": "x"}, {}, r"^task: must be a whole number of at most 19 digits, not 'x'$"),
        (
            {"since": "9" * 5000},
            {},
            r"^since: must be a whole number of at most 19 digits, not '9{40}\.\.\. \(5000 characters\)'$",
        ),
        (
            {"task": "0"},
            {},
            r"^bad params for tasks\.events: task: Input should be greater than or equal to 1 \(got 0\)$",
        ),
        (
            {"task": str(2**63)},
            {},
            r"^bad params for tasks\.events: task: Input should be less than or equal",
        ),
        (
            {"since": "-1"},
            {},
            r"^bad params for tasks\.events: since: Input should be greater than or equal to 0 \(got -1\)$",
        ),
        (
            {},
            {"Last-Event-ID": "abc"},
            r"^Last-Event-ID: must be a whole number of at most 19 digits, not 'abc'$",
        ),
        ({}, {"Last-Event-ID": "1" * 4400}, r"^Last-Event-ID: must be a whole number of at most 19 digits"),
        ({"type": ""}, {}, r"^bad params for tasks\.events: type: String should have at least 1 character"),
        ({"key": ""}, {}, r"^bad params for tasks\.events: key: String should have at least 1 character"),
        ({"state": "running"}, {}, r"^unknown query parameter 'state'; parameters: task, type, key, since$"),
        ("task=1&task=2", {}, r"^a query parameter is given more than once"),
    ],
)
def test_bad_event_queries_are_400(
    http: httpx.Client, query: dict[str, str] | str, headers: dict[str, str], message: str
) -> None:
    reply = http.get("/v1/events", params=query, headers=headers)
    assert reply.status_code == 400
    assert re.search(message, reply.json()["error"]["message"])


def test_an_unknown_task_is_404_before_the_stream(http: httpx.Client) -> None:
    reply = http.get("/v1/events", params={"task": 999_999})
    assert (reply.status_code, reply.json()["error"]["code"]) == (404, "not_found")


def test_a_caller_who_may_not_read_tasks_gets_no_stream(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(BASE_CONFIG.replace('actions = ["*"]', 'actions = ["tasks.start:echo"]'))
    with Client(socket=daemon.socket) as client, unix_http(daemon) as http:
        task = client.start_task("echo", {"word": "x"})
        for query in ({}, {"task": task.id}, {"type": "echo"}, {"since": 0}):
            reply = http.get("/v1/events", params=query)
            assert (reply.status_code, reply.json()["error"]["code"]) == (403, "forbidden"), query


def test_tasks_events_polls_on_from_an_id_or_says_reset(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(BASE_CONFIG.replace("[tasks]\n", "[tasks]\nevents_history = 5\n"))
    with Client(socket=daemon.socket) as client:
        for word in ("a", "b", "c"):
            task = client.start_task("echo", {"word": word})
            wait_until(lambda: states(client)[task.id]["state"] == "succeeded", "the end")
        latest = client.call("tasks", "events")
        oldest, last = latest[0]["id"], latest[-1]["id"]
        assert len(latest) == 5 and all(set(e) == SHAPE for e in latest)
        page = client.call("tasks", "events", since=oldest - 1, limit=2)
        assert [e["id"] for e in page] == [
            oldest,
            oldest + 1,
        ]  # the first after the id: poll on from the last
        assert client.call("tasks", "events", since=last) == []
        reset, *held = client.call("tasks", "events", since=oldest - 2, limit=3)
        assert (reset["id"], reset["kind"], reset["data"]) == (
            None,
            "reset",
            {"since": oldest - 2, "oldest": oldest, "last": last},
        )
        assert [e["id"] for e in held] == [oldest, oldest + 1, oldest + 2]


def test_tasks_events_takes_the_filters_of_the_stream(daemon: Daemon, http: httpx.Client) -> None:
    """task, type and key as on GET /v1/events: the same events, the same checks, the same 404."""
    with Client(socket=daemon.socket) as client:
        one = client.start_task("echo", {"word": "one"}, key="k1")
        two = client.start_task("echo", {"word": "two"})
        scan = client.start_task("scan", {"task_id": 1, "duration": 0.5})
        for run in (one, two, scan):
            wait_until(lambda run=run: states(client)[run.id]["state"] == "succeeded", "the end")
        every = client.call("tasks", "events")
        last = every[-1]["id"]

        def of(*runs: Any) -> list[int]:
            return [e["id"] for e in every if e["data"]["id"] in {run.id for run in runs}]

        assert any(e["kind"] == "progress" and e["data"]["id"] == scan.id for e in every)
        for query, runs in (
            ({"type": "scan"}, [scan]),  # its progress too, judged by its run's type
            ({"type": "echo"}, [one, two]),
            ({"task": two.id}, [two]),
            ({"key": "k1"}, [one]),
            ({"type": "echo", "key": "k1"}, [one]),
            ({"type": "scan", "key": "k1"}, []),
        ):
            expected = of(*runs)
            assert [e["id"] for e in client.call("tasks", "events", **query)] == expected, query
            assert [e["id"] for e in client.call("tasks", "events", since=0, **query)] == expected, query
            if expected:  # the stream, resumed from the start, sends the same
                streamed = read_events(http, lambda e: e["id"] == expected[-1], since=0, **query)
                assert [e["id"] for e in streamed if e["id"] is not None] == expected, query
        assert [e["id"] for e in client.call("tasks", "events", type="echo", limit=2)] == of(one, two)[-2:]
        assert client.call("tasks", "events", since=last, task=one.id) == []
        for params, message in (
            ({"task": 0}, r"task: Input should be greater than or equal to 1 \(got 0\)$"),
            ({"type": ""}, r"type: String should have at least 1 character"),
            ({"key": ""}, r"key: String should have at least 1 character"),
        ):
            with pytest.raises(errors.ParamsInvalid, match=rf"^bad params for tasks\.events: {message}"):
                client.call("tasks", "events", **params)
        with pytest.raises(errors.NotFound, match=r"999999"):
            client.call("tasks", "events", task=999_999)
