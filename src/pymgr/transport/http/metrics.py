"""``GET /metrics``: a ``metrics.snapshot`` in the Prometheus text format.

prometheus_client writes the format (metric types, ``_total`` suffixes,
label escaping) and adds the process's own figures (CPU seconds, resident
memory, open descriptors, start time). It is imported at the first scrape,
so a daemon that nobody scrapes does not carry it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["CONTENT_TYPE", "render"]

#: The exposition format's media type (text format 0.0.4, which every Prometheus reads).
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_REQUEST_LABELS = ["transport", "module", "action", "outcome"]


def render(snapshot: Mapping[str, Any]) -> bytes:
    """The text a scraper reads, from ``Metrics.snapshot()``."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)


class _SnapshotCollector:
    def __init__(self, snapshot: Mapping[str, Any]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.snapshot
        calls = CounterMetricFamily(
            "pymgr_requests",
            "Calls dispatched, by transport, module, action and outcome (ok, or the error code).",
            labels=_REQUEST_LABELS,
        )
        seconds = CounterMetricFamily(
            "pymgr_request_seconds", "Seconds spent answering dispatched calls.", labels=_REQUEST_LABELS
        )
        for *labels, count, spent in snap["requests"]:
            calls.add_metric(labels, count)
            seconds.add_metric(labels, spent)
        started = CounterMetricFamily(
            "pymgr_task_runs_started", "Task runs spawned, by type.", labels=["type"]
        )
        for task_type, count in snap["tasks_started"]:
            started.add_metric([task_type], count)
        ended = CounterMetricFamily(
            "pymgr_task_runs_ended", "Task runs ended, by type and end state.", labels=["type", "state"]
        )
        for task_type, state, count in snap["tasks_ended"]:
            ended.add_metric([task_type, state], count)
        yield from (calls, seconds, started, ended)
        for name, gauge in snap["gauges"].items():
            family = GaugeMetricFamily(name, gauge["help"], labels=gauge["labels"])
            for *labels, value in gauge["values"]:
                family.add_metric(labels, value)
            yield family
        yield GaugeMetricFamily(
            "pymgr_start_time_seconds", "When the daemon started (Unix time).", value=snap["started_at"]
        )
        yield CounterMetricFamily(
            "pymgr_metrics_overflowed",
            "Counts that went to the _other label set: a counter had max_series label sets already.",
            value=snap["overflowed"],
        )
