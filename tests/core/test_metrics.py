"""The daemon's counters: what a call and a task's transition count, and the bound on label sets."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pymgr.metrics import MAX_SERIES, Metrics
from pymgr.transport.http.metrics import render


def test_calls_are_counted_with_their_time_by_label_set() -> None:
    metrics = Metrics()
    metrics.request("unix", "demo", "echo", "ok", 0.25)
    metrics.request("unix", "demo", "echo", "ok", 0.5)
    metrics.request("legacy", "demo", "echo", "forbidden", 0.125)
    assert sorted(metrics.snapshot()["requests"]) == [
        ["legacy", "demo", "echo", "forbidden", 1, 0.125],
        ["unix", "demo", "echo", "ok", 2, 0.75],
    ]


def test_task_runs_started_and_ended_by_type_and_state() -> None:
    metrics = Metrics()
    metrics.task_started("scan")
    metrics.task_started("scan")
    metrics.task_ended("scan", "failed")
    snapshot = metrics.snapshot()
    assert (snapshot["tasks_started"], snapshot["tasks_ended"]) == ([["scan", 2]], [["scan", "failed", 1]])


@pytest.mark.parametrize("limit", [1, 3])
def test_label_sets_stop_at_max_series_and_the_rest_is_counted_as_other(limit: int) -> None:
    metrics = Metrics(max_series=limit)
    for n in range(limit):  # exactly the limit: every one kept
        metrics.request("unix", f"m{n}", "a", "ok", 1.0)
    assert metrics.overflowed == 0
    metrics.request("unix", "m-new", "a", "ok", 1.0)  # one past it
    metrics.request("unix", "m-newer", "a", "ok", 1.0)
    metrics.request("unix", "m0", "a", "ok", 1.0)  # a kept one still counts as itself
    rows = {tuple(row[:4]): row[4] for row in metrics.snapshot()["requests"]}
    assert rows[("unix", "_other", "_other", "ok")] == 2 and rows[("unix", "m0", "a", "ok")] == 2
    assert len(rows) == limit + 1 and metrics.overflowed == 2
    for n in range(limit + 5):
        metrics.task_started(f"type{n}")
    assert dict(map(tuple, metrics.snapshot()["tasks_started"]))["_other"] == 5  # type: ignore[arg-type]


def test_the_default_bound_and_a_bad_one() -> None:
    assert Metrics().max_series == MAX_SERIES == 1000
    with pytest.raises(ValueError, match="max_series must be >= 1"):
        Metrics(max_series=0)


def test_gauges_are_read_at_each_snapshot() -> None:
    metrics = Metrics()
    open_connections = [3]
    metrics.gauge("pymgr_http_connections", "Open connections.", lambda: float(open_connections[0]))
    metrics.gauge(
        "pymgr_task_runs_active", "Active runs.", lambda: {("scan", "running"): 2.0}, labels=("type", "state")
    )
    assert metrics.snapshot()["gauges"]["pymgr_http_connections"]["values"] == [[3.0]]
    open_connections[0] = 1
    gauges = metrics.snapshot()["gauges"]
    assert gauges["pymgr_http_connections"]["values"] == [[1.0]]
    assert gauges["pymgr_task_runs_active"] == {
        "help": "Active runs.",
        "labels": ["type", "state"],
        "values": [["scan", "running", 2.0]],
    }


def test_the_prometheus_text_has_every_family_with_its_type() -> None:
    metrics = Metrics()
    metrics.request("unix", "demo", "echo", "ok", 0.5)
    metrics.task_ended("scan", "succeeded")
    metrics.gauge("pymgr_keeper_connected", "1 while connected.", lambda: 1.0)
    families = {f.name: f for f in text_string_to_metric_families(render(metrics.snapshot()).decode())}
    assert families["pymgr_requests"].type == "counter"
    (sample,) = families["pymgr_requests"].samples
    assert (sample.name, sample.labels, sample.value) == (
        "pymgr_requests_total",
        {"transport": "unix", "module": "demo", "action": "echo", "outcome": "ok"},
        1.0,
    )
    assert families["pymgr_request_seconds"].samples[0].value == 0.5
    assert families["pymgr_task_runs_ended"].samples[0].labels == {"type": "scan", "state": "succeeded"}
    assert (
        families["pymgr_keeper_connected"].type == "gauge"
        and families["pymgr_keeper_connected"].samples[0].value == 1
    )
    # the process's own, from the library
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert families["pymgr_start_time_seconds"].samples[0].value == pytest.approx(metrics.started_at)


def test_label_values_are_escaped_not_trusted() -> None:
    metrics = Metrics()
    metrics.request("unix", 'a"b\\c\nd', "x", "ok", 0.0)  # only registered names get here, but still
    (family,) = [
        f
        for f in text_string_to_metric_families(render(metrics.snapshot()).decode())
        if f.name == "pymgr_requests"
    ]
    assert family.samples[0].labels["module"] == 'a"b\\c\nd'
