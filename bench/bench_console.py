"""The web console's benchmark: its tasks page over a full history, and many browsers on one subscription.

    python -m bench.bench_console [--history 10000] [--requests 200] [--streams 200] [--rounds 3]

Prints figure / console / baseline / ratio / target, writes bench/results/console.json.

How it measures (a real daemon and a real ``pymgr console``, each its own process, started here on a
temporary socket and an ephemeral port; the state in a temporary directory, never ./var):

1. **The tasks page over 10,000 runs** (issue 15: p95 <= 50 ms of server time). The history is written
   into the store before the daemon starts (``task_history.seed``, as bench_tasks does). Signed in
   as a person of the console, ``GET /tasks`` (the newest page) and ``GET /tasks?state=failed`` are
   asked ``--requests`` times each in sequence on one keep-alive connection: the time from request to
   whole reply is the page's server time (loopback, nothing else on the connection). Baseline: the
   daemon's own ``GET /v1/tasks`` for the same page (``limit`` = the console's page size), asked the same
   way on the Unix socket in the same run; the console's and the daemon's CPU per page are printed too.
2. **200 browsers cost the daemon what one does** (issue 15). ``--streams`` event streams
   (``GET /events``, what a tasks page's EventSource opens) against one: the daemon's
   ``pymgr_event_subscribers`` gauge while they are open (1: the console's hub), and the daemon's CPU per
   event while 10 short runs make about 230 events (state changes and progress), 200 streams over 1.
3. **The console's CPU per delivered event** (issue 15 asks for it reported): the console's CPU while
   those events are delivered, divided by the events every stream received, with 1 and 200 streams.
   Rounds alternate 1 and 200; the figures are medians over ``--rounds``.

CPU is utime + stime of the whole process (``_proc.cpu_seconds``). Run as root, the console is started
with ``user = "nobody"`` (it never serves as root) and the socket is opened to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import task_history
from bench._console_setup import Stack, start_stack, stop_stack
from bench._proc import cpu_seconds
from bench.unix_http import Conn, read_head

RESULTS = Path(__file__).resolve().parent / "results"
#: Short runs that make the events of a phase (``_console_setup.TICKER``: 20 progress lines 20 ms apart).
RUNS = 10
#: "The same as one": the daemon's CPU per event with many streams within this factor of one stream's
#: (the console holds one subscription either way; what is left is the noise of a shared machine).
SAME_AS_ONE = 1.2


# -- 1. the tasks page ---------------------------------------------------------------------------


def percentile_ms(latencies: list[float], fraction: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * fraction) - 1))] * 1000


async def timed(conn: Conn, target: str, requests: int, pids: tuple[int, int]) -> dict[str, float]:
    """p95 and p50 of ``requests`` GETs of ``target`` on ``conn``, and each process's CPU per request."""
    latencies = []
    before = [cpu_seconds(pid) for pid in pids]
    for _ in range(requests):
        started = time.perf_counter()
        status, body = await conn.request("GET", target)
        latencies.append(time.perf_counter() - started)
        if status != 200:
            raise SystemExit(f"GET {target}: {status} {body[:300]!r}")
    cpu = [(cpu_seconds(pid) - b) / requests * 1000 for pid, b in zip(pids, before, strict=True)]
    return {
        "p95_ms": percentile_ms(latencies, 0.95),
        "p50_ms": percentile_ms(latencies, 0.5),
        "console_cpu_ms": cpu[0],
        "daemon_cpu_ms": cpu[1],
    }


async def tasks_page(stack: Stack, requests: int) -> dict[str, Any]:
    """Each page through the console, then the same page from the daemon (a connection each: an idle
    keep-alive connection is closed by the daemon's header timeout)."""
    pids = (stack.console.pid, stack.daemon.pid)
    figures: dict[str, Any] = {}
    for name, page, api in (
        ("newest", "/tasks", "/v1/tasks"),
        ("state=failed", "/tasks?state=failed", "/v1/tasks?state=failed"),
    ):
        browser = await Conn.open_tcp("127.0.0.1", stack.port, {"cookie": stack.cookie})
        await timed(browser, page, 10, pids)  # warm-up: templates, SQLite pages
        console = await timed(browser, page, requests, pids)
        browser.close()
        daemon = await Conn.open(str(stack.socket))
        api += f"{'&' if '?' in api else '?'}limit={stack.page_size}"
        figures[name] = {"console": console, "daemon": await timed(daemon, api, requests, pids)}
        daemon.close()
    return figures


# -- 2 and 3. event streams ------------------------------------------------------------------------


class Stream:
    """One browser's ``GET /events``: counts the events it was sent, and the runs it saw end."""

    def __init__(self) -> None:
        self.events = 0
        self.ended = 0
        self.open = asyncio.Event()

    async def run(self, port: int, cookie: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /events HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncookie: {cookie}\r\n\r\n".encode())
        status, _ = await read_head(reader)
        if status != 200:
            raise SystemExit(f"GET /events: {status}")
        try:
            while size := int((await reader.readline()).strip() or b"0", 16):
                chunk = await reader.readexactly(size + 2)
                self.open.set()
                self.events += chunk.count(b"event: state\n") + chunk.count(b"event: progress\n")
                self.ended += chunk.count(b'"state": "succeeded"')
        finally:
            writer.close()


async def subscribers(stack: Stack) -> int:
    conn = await Conn.open(str(stack.socket))
    _, body = await conn.request("GET", "/metrics")
    conn.close()
    line = next(x for x in body.decode().splitlines() if x.startswith("pymgr_event_subscribers "))
    return int(float(line.split()[1]))


async def one_phase(stack: Stack, count: int) -> dict[str, float]:
    """``count`` streams open; ``RUNS`` runs make events; the CPU each process spent per event."""
    streams = [Stream() for _ in range(count)]
    readers = [asyncio.create_task(s.run(stack.port, stack.cookie)) for s in streams]
    await asyncio.wait_for(asyncio.gather(*(s.open.wait() for s in streams)), 60)
    watching = await subscribers(stack)
    await asyncio.sleep(0.5)  # the streams' opening settled
    before = cpu_seconds(stack.console.pid), cpu_seconds(stack.daemon.pid)
    conn = await Conn.open(str(stack.socket))
    for _ in range(RUNS):
        status, body = await conn.request("POST", "/v1/tasks", {"type": "ticker"})
        if status != 202:
            raise SystemExit(f"start: {status} {body[:300]!r}")
    conn.close()
    deadline = time.monotonic() + 60
    while min(s.ended for s in streams) < RUNS:
        if time.monotonic() > deadline or any(r.done() for r in readers):
            raise SystemExit(
                f"the streams saw {[s.ended for s in streams][:5]}... of {RUNS} runs end in 60 s"
            )
        await asyncio.sleep(0.02)
    console_cpu, daemon_cpu = (
        cpu_seconds(stack.console.pid) - before[0],
        cpu_seconds(stack.daemon.pid) - before[1],
    )
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    events = min(s.events for s in streams)
    return {
        "daemon_subscribers": watching,
        "events": events,
        "daemon_us_per_event": daemon_cpu / events * 1e6,
        "console_us_per_delivered": console_cpu / (events * count) * 1e6,
    }


async def streams(stack: Stack, many: int, rounds: int) -> dict[str, Any]:
    phases: dict[int, list[dict[str, float]]] = {1: [], many: []}
    for round_ in range(rounds):
        for count in (1, many) if round_ % 2 == 0 else (many, 1):
            phases[count].append(await one_phase(stack, count))
            await asyncio.sleep(0.5)  # the closed streams are gone before the next phase
    return {
        str(count): {key: statistics.median(p[key] for p in runs) for key in runs[0]}
        for count, runs in phases.items()
    }


# -- the report ------------------------------------------------------------------------------------


def table(f: dict[str, Any], many: int) -> tuple[str, list[bool]]:
    """The report (a line per figure: value, baseline, ratio, target) and which targets hold."""
    one, lots = f["streams"]["1"], f["streams"][str(many)]
    rows: list[tuple[str, float, float | None, str, bool | None]] = []
    for name, page in f["tasks_page"].items():
        p95, base = page["console"]["p95_ms"], page["daemon"]["p95_ms"]
        rows.append((f"tasks page p95 (ms), {name}, {f['history']:,} runs", p95, base, "<= 50 ms", p95 <= 50))
    subscribed, daemon_us = lots["daemon_subscribers"], lots["daemon_us_per_event"]
    per_delivered = "console CPU per delivered event (us)"
    rows += [
        (
            f"daemon event subscribers, {many} streams",
            subscribed,
            one["daemon_subscribers"],
            "1",
            subscribed == 1,
        ),
        (
            f"daemon CPU per event (us), {many} streams",
            daemon_us,
            one["daemon_us_per_event"],
            f"<= {SAME_AS_ONE}x one stream",
            daemon_us <= SAME_AS_ONE * one["daemon_us_per_event"],
        ),
        (f"{per_delivered}, 1 stream", one["console_us_per_delivered"], None, "reported", None),
        (
            f"{per_delivered}, {many} streams",
            lots["console_us_per_delivered"],
            one["console_us_per_delivered"],
            "reported",
            None,
        ),
    ]
    lines = [f"{'figure':52} {'console':>10} {'baseline':>10} {'ratio':>7}  target"]
    for name, value, base, target, ok in rows:
        shown = ("-", "-") if base is None else (f"{base:.2f}", f"{value / base:.2f}")
        verdict = "" if ok is None else " ok" if ok else " MISSED"
        lines.append(f"{name:52} {value:>10.2f} {shown[0]:>10} {shown[1]:>7}  {target}{verdict}")
    cpu = "; ".join(
        f"{name}: console {p['console']['console_cpu_ms']:.2f} + daemon {p['console']['daemon_cpu_ms']:.2f} ms, "
        f"p50 {p['console']['p50_ms']:.1f} ms (daemon alone {p['daemon']['daemon_cpu_ms']:.2f} ms)"
        for name, p in f["tasks_page"].items()
    )
    lines.append(f"(CPU per tasks page: {cpu}; baseline of the pages: the daemon's GET /v1/tasks, same page)")
    lines.append(
        f"(events per phase: {one['events']:.0f}; baselines of the stream figures: one stream, same run)"
    )
    return "\n".join(lines), [ok is not False for *_, ok in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--history", type=int, default=10_000, help="ended runs in the store")
    parser.add_argument("--requests", type=int, default=200, help="requests per page")
    parser.add_argument("--streams", type=int, default=200, help="browser event streams against one")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 1 and --streams streams")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of console.json")
    args = parser.parse_args(argv)
    if min(args.history, args.requests, args.streams, args.rounds) < 1:
        parser.error("--history, --requests, --streams and --rounds must be at least 1")
    directory = Path(tempfile.mkdtemp(prefix="pymgr-bench-console-"))
    started = time.monotonic()
    task_history.seed(directory / "state", args.history)
    stack = start_stack(directory, args.streams)
    try:
        figures: dict[str, Any] = {"history": args.history}
        figures["tasks_page"] = asyncio.run(tasks_page(stack, args.requests))
        figures["streams"] = asyncio.run(streams(stack, args.streams, args.rounds))
    finally:
        stop_stack(stack)
        shutil.rmtree(directory, ignore_errors=True)
    text, oks = table(figures, args.streams)
    print(text)
    args.results.mkdir(exist_ok=True)
    result = {
        "figures": figures,
        "seconds": round(time.monotonic() - started, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": os.getloadavg()},
    }
    (args.results / "console.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"raw results: {args.results / 'console.json'}")
    return 1 if args.strict and not all(oks) else 0


if __name__ == "__main__":
    sys.exit(main())
