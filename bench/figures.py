"""The figures: what one round measures, for pymgr and each baseline.

Rules:
- Every figure measures pymgr and its baselines in the same round, one
  after the other, in an order that rotates from round to round (so no
  server always runs first, or always right after a heavy one).
- A sample is one server's values for one figure in one round. Columns
  are fixed names: ``pymgr``, ``pymgr base`` (with ``--baseline``; every figure but start-up), ``supervisord``, ``seed``, ``asgi floor``,
  ``line floor``; a baseline that is not installed is left out, not faked.
- Throughput figures: ``clients`` processes, ``duration_s`` each, server
  CPU per request from /proc. Latency: one client, sequential requests.
  Task start: from sending the start request until the daemon's event
  stream announces the run as running (with its pid). Start-up: a fresh daemon per round, from spawn to
  its socket answering, then its idle RSS.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import peers, servers
from bench._events import EventStream
from bench._proc import rss_mib
from bench.loadgen import Client, LoadError, Target, latency_samples, run_load
from bench.peers import xmlrpc_request
from bench.servers import Fleet, Server
from bench.targets import (
    floor_asgi_targets,
    floor_line_targets,
    http_post,
    pymgr_targets,
    seed_targets,
    supervisord_targets,
)

#: Seconds between polls of supervisord's process info while waiting for the scan to end.
TASK_END_POLL_S = 0.01
#: Task states the figure waits for (pymgr's events).
RUNNING = frozenset({"running"})
ENDED = frozenset({"succeeded", "failed", "stopped", "timed_out", "lost"})
#: Seconds a task run gets to end before the figure fails (the scan exits at once).
TASK_END_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Settings:
    rounds: int = 5
    duration_s: float = 2.0
    clients: int = 8
    latency_requests: int = 3000
    task_starts: int = 10
    #: Seconds a fresh daemon idles after it answers, before its RSS is read.
    idle_settle_s: float = 1.0


@dataclass
class Sample:
    figure: str
    server: str
    round: int
    values: dict[str, float]
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    #: Metric name -> (label, unit, higher is better).
    metrics: dict[str, tuple[str, str, bool]]
    measure: Callable[[Bench, str, int], Sample]
    columns: tuple[str, ...]


class Bench:
    """The running servers and the targets each column uses."""

    def __init__(self, fleet: Fleet, workdir: Path, settings: Settings) -> None:
        self.fleet = fleet
        self.workdir = workdir
        self.settings = settings
        pymgr = fleet["pymgr"]
        self.secret: str = pymgr.info["legacy_secret"]
        self.targets: dict[str, tuple[Server, dict[str, Target]]] = {"pymgr": (pymgr, pymgr_targets(pymgr))}
        if "pymgr-base" in fleet:
            self.targets["pymgr base"] = (fleet["pymgr-base"], pymgr_targets(fleet["pymgr-base"]))
        if "supervisord" in fleet:
            self.targets["supervisord"] = (fleet["supervisord"], supervisord_targets(fleet["supervisord"]))
        if "seed" in fleet:
            self.targets["seed"] = (fleet["seed"], seed_targets(fleet["seed"], self.secret))
        self.targets["asgi floor"] = (fleet["floor-asgi"], floor_asgi_targets(fleet["floor-asgi"]))
        self.targets["line floor"] = (
            fleet["floor-line"],
            floor_line_targets(fleet["floor-line"], self.secret),
        )

    def columns(self, figure: Figure) -> list[str]:
        """The figure's columns whose server is running here."""
        return [c for c in figure.columns if c in self.targets]


# --- load figures -----------------------------------------------------------------


def _load(load: str) -> Callable[[Bench, str, int], Sample]:
    def measure(bench: Bench, column: str, round_: int) -> Sample:
        server, targets = bench.targets[column]
        s = bench.settings
        result = run_load(targets[load], server.pid, clients=s.clients, duration_s=s.duration_s)
        values = {"rps": result.throughput, "cpu_us": result.cpu_per_request_us}
        raw = {"requests": result.requests, "wall_s": result.wall_s, "server_cpu_s": result.server_cpu_s}
        return Sample("", column, round_, values, raw)

    return measure


def _latency(bench: Bench, column: str, round_: int) -> Sample:
    server, targets = bench.targets[column]
    samples = sorted(latency_samples(targets["http"], bench.settings.latency_requests))
    n = len(samples)
    values = {"p50_us": samples[n // 2], "p99_us": samples[min(n - 1, int(n * 0.99))], "max_us": samples[-1]}
    return Sample("", column, round_, values, {"requests": n})


# --- task start ---------------------------------------------------------------------


def _pymgr_task_start(events: EventStream, client: Client) -> float:
    """Seconds from the start request to the daemon's "running" event; then wait for the run's end."""
    start = http_post("/v1/tasks", b'{"type":"scan","params":{"task_id":1,"duration":0}}')
    started = time.perf_counter()
    task_id = json.loads(client.request(start))["result"]["id"]
    seen, record = events.wait_for(task_id, RUNNING | ENDED)
    if record["pid"] is None:
        raise LoadError(f"pymgr: task {task_id} ended {record['state']} without a pid: {record.get('error')}")
    if record["state"] == "running":
        events.wait_for(task_id, ENDED)
    return seen - started


def _supervisord_task_start(client: Client) -> float:
    """Seconds for startProcess (startsecs=0: it returns once the process is RUNNING)."""
    started = time.perf_counter()
    reply = client.request(xmlrpc_request("supervisor.startProcess", "scan"))
    elapsed = time.perf_counter() - started
    if b"<boolean>1</boolean>" not in reply:
        raise LoadError(f"supervisord: startProcess failed: {reply[:300]!r}")
    info = xmlrpc_request("supervisor.getProcessInfo", "scan")
    _wait_until(lambda: b"EXITED" in client.request(info), "supervisord")
    return elapsed


def _wait_until(done: Callable[[], bool], who: str) -> None:
    deadline = time.monotonic() + TASK_END_TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            raise LoadError(f"{who}: the scan task did not end within {TASK_END_TIMEOUT_S} s")
        time.sleep(TASK_END_POLL_S)


def _task_start(bench: Bench, column: str, round_: int) -> Sample:
    server, _ = bench.targets[column]
    client = Client(Target(column, server.info["unix"], b"", "http", True, b""))
    events = EventStream(server.info["unix"]) if column.startswith("pymgr") else None
    try:
        if events is not None:
            times = [_pymgr_task_start(events, client) for _ in range(bench.settings.task_starts)]
        else:
            times = [_supervisord_task_start(client) for _ in range(bench.settings.task_starts)]
    finally:
        client.close()
        if events is not None:
            events.close()
    times = sorted(t * 1e6 for t in times)
    values = {"median_us": times[len(times) // 2], "max_us": times[-1]}
    return Sample("", column, round_, values, {"starts": len(times), "times_us": times})


# --- start-up and idle memory -----------------------------------------------------------


def _startup(bench: Bench, column: str, round_: int) -> Sample:
    workdir = bench.workdir / f"startup-{round_}-{column}"
    if column == "pymgr":
        server = servers.start_pymgr(workdir, name=f"pymgr-startup-{round_}")
    else:
        examples = Path(bench.fleet["pymgr"].info["config"]).parent
        server = peers.start_supervisord(
            workdir, servers.scan_argv(), examples, name=f"supervisord-startup-{round_}"
        )
    try:
        time.sleep(bench.settings.idle_settle_s)
        rss = rss_mib(server.pid)
    finally:
        stop_s = server.stop()
    values = {"ready_s": server.start_s, "rss_mib": rss}
    raw = {
        "stop_s": stop_s,
        **({"ready_log_s": server.info["ready_log_s"]} if "ready_log_s" in server.info else {}),
    }
    return Sample("", column, round_, values, raw)


FIGURES = (
    Figure(
        "control",
        "1. control calls: HTTP on the Unix socket, keep-alive, demo.echo",
        {"rps": ("calls/s", "/s", True), "cpu_us": ("server CPU/call", "µs", False)},
        _load("http"),
        ("pymgr", "pymgr base", "supervisord", "asgi floor", "line floor"),
    ),
    Figure(
        "newconn-legacy",
        "2a. new connection per request: legacy protocol (TCP loopback)",
        {"rps": ("requests/s", "/s", True), "cpu_us": ("server CPU/request", "µs", False)},
        _load("legacy"),
        ("pymgr", "pymgr base", "seed", "line floor"),
    ),
    Figure(
        "newconn-http",
        "2b. new connection per request: HTTP on the Unix socket",
        {"rps": ("requests/s", "/s", True), "cpu_us": ("server CPU/request", "µs", False)},
        _load("http-newconn"),
        ("pymgr", "pymgr base", "supervisord", "asgi floor"),
    ),
    Figure(
        "latency",
        "3. latency: one client, sequential calls, keep-alive",
        {"p50_us": ("p50", "µs", False), "p99_us": ("p99", "µs", False)},
        _latency,
        ("pymgr", "pymgr base", "supervisord", "asgi floor"),
    ),
    Figure(
        "task-start",
        "4. task start: start request -> running, with its pid",
        {"median_us": ("median", "µs", False)},
        _task_start,
        ("pymgr", "pymgr base", "supervisord"),
    ),
    Figure(
        "startup",
        "5. a fresh daemon: start-up to answering, idle RSS",
        {"ready_s": ("start-up", "s", False), "rss_mib": ("idle RSS", "MiB", False)},
        _startup,
        ("pymgr", "supervisord"),
    ),
)


def measure(figure: Figure, bench: Bench, column: str, round_: int) -> Sample:
    sample = figure.measure(bench, column, round_)
    sample.figure = figure.name
    return sample
