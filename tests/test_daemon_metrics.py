"""GET /metrics and metrics.snapshot on a real daemon: calls, refusals, task runs, gauges, and who may read them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.legacy_client import call as legacy_call
from pymgr.client import Client
from pymgr.errors import NotFound, ParamsInvalid
from tests.conftest import BASE_CONFIG, LEGACY_SECRET, Daemon
from tests.test_daemon_http import wait_for

MODULES = 'enabled = ["demo", "tasks", "SCAN_MODULE"]'
CONFIG = BASE_CONFIG.replace(MODULES, 'enabled = ["demo", "tasks", "SCAN_MODULE", "metrics"]')
assert CONFIG != BASE_CONFIG


def http(daemon: Daemon) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://pymgr")


def scrape(daemon: Daemon) -> dict[str, Any]:
    with http(daemon) as c:
        reply = c.get("/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {family.name: family for family in text_string_to_metric_families(reply.text)}


def values(family: Any, *labels: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(s.labels[name] for name in labels): s.value
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_metrics_count_calls_refusals_task_runs_and_connections(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(CONFIG)
    with Client(socket=daemon.socket) as client:
        for n in range(3):
            client.call("demo", "echo", n=n)
        with pytest.raises(NotFound):
            client.call("no_such_module", "x")  # a caller-chosen name is never a label
        with pytest.raises(ParamsInvalid):
            client.start_task("echo", {})  # "word" missing
        run = client.start_task("echo", {"word": "hi"})
        wait_for(lambda: client.task(run.id).state == "succeeded")
    legacy_call("127.0.0.1", daemon.legacy_port, LEGACY_SECRET, "demo", "echo", {})
    families = scrape(daemon)
    calls = values(families["pymgr_requests"], "transport", "module", "action", "outcome")
    assert calls[("unix", "demo", "echo", "ok")] == 3
    assert calls[("unix", "_unknown", "_unknown", "not_found")] == 1
    assert (
        calls[("unix", "tasks", "start", "bad_params")] == 1 and calls[("unix", "tasks", "start", "ok")] == 1
    )
    assert calls[("legacy", "demo", "echo", "ok")] == 1
    assert all(name != "no_such_module" for _, name, _, _ in calls)
    assert (
        values(families["pymgr_request_seconds"], "transport", "module", "action", "outcome")[
            ("unix", "demo", "echo", "ok")
        ]
        > 0
    )
    assert values(families["pymgr_task_runs_started"], "type") == {("echo",): 1}
    assert values(families["pymgr_task_runs_ended"], "type", "state") == {("echo", "succeeded"): 1}
    assert values(families["pymgr_keeper_connected"]) == {(): 1}
    assert values(families["pymgr_http_connections"])[()] >= 1  # this scrape's own connection
    # The legacy connection is gone once the daemon handled its close (a moment after the client saw it).
    wait_for(lambda: values(scrape(daemon)["pymgr_legacy_connections"]) == {(): 0})
    assert families["process_open_fds"].samples[0].value > 0


def test_active_runs_are_a_gauge_by_type_and_state(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(CONFIG)
    with Client(socket=daemon.socket) as client:
        run = client.start_task("scan", {"task_id": 1, "duration": 30})
        wait_for(lambda: client.task(run.id).state == "running")
        assert values(scrape(daemon)["pymgr_task_runs_active"], "type", "state") == {("scan", "running"): 1}
        assert values(scrape(daemon)["pymgr_event_subscribers"]) == {(): 0}
        stream = client.events()
        next(stream)  # the running scan's state: the stream is open
        assert values(scrape(daemon)["pymgr_event_subscribers"]) == {(): 1}
        stream.close()
        client.stop_task(run.id)
        wait_for(lambda: client.task(run.id).state == "stopped")
    families = scrape(daemon)
    assert values(families["pymgr_task_runs_active"], "type", "state") == {}
    assert values(families["pymgr_task_runs_ended"], "type", "state") == {("scan", "stopped"): 1}


def test_the_snapshot_is_an_action_too_and_the_policy_decides_who_reads_it(
    start_daemon: Callable[..., Daemon],
) -> None:
    # The legacy callers may read nothing but demo.echo here; owner (this test) may call metrics.snapshot.
    rules = BASE_CONFIG[BASE_CONFIG.index("[[policy.rules]]") : BASE_CONFIG.index("[modules]")]
    config = CONFIG.replace(
        rules,
        '[[policy.rules]]\nname = "me"\nsubjects = ["owner"]\nactions = ["metrics.snapshot"]\n\n'
        '[[policy.rules]]\nname = "old clients"\nsubjects = ["legacy"]\nactions = ["demo.echo"]\n\n',
    )
    daemon = start_daemon(config)
    with Client(socket=daemon.socket) as client:
        snapshot = client.call("metrics", "snapshot")
    assert {"requests", "tasks_started", "tasks_ended", "gauges", "started_at", "overflowed"} <= set(snapshot)
    denied = legacy_call("127.0.0.1", daemon.legacy_port, LEGACY_SECRET, "metrics", "snapshot", {})
    assert denied["success"] is False  # not in the legacy callers' rule
    assert scrape(daemon)["pymgr_requests"]  # owner scrapes


def test_scraping_is_forbidden_without_a_rule_and_404_without_the_module(
    start_daemon: Callable[..., Daemon],
) -> None:
    rules = BASE_CONFIG[BASE_CONFIG.index("[[policy.rules]]") : BASE_CONFIG.index("[modules]")]
    config = CONFIG.replace(
        rules, '[[policy.rules]]\nname = "me"\nsubjects = ["owner"]\nactions = ["demo.*"]\n\n'
    )
    with http(start_daemon(config, name="no-rule")) as c:
        reply = c.get("/metrics")
    assert reply.status_code == 403 and reply.json()["error"]["code"] == "forbidden"
    with http(start_daemon(BASE_CONFIG, name="no-module")) as c:
        reply = c.get("/metrics")
    assert reply.status_code == 404 and "metrics" in reply.json()["error"]["message"]
    with http(start_daemon(CONFIG, name="post")) as c:
        assert c.post("/metrics").status_code == 405
