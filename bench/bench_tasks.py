"""Task engine benchmark: start latency against plain Popen, idle cost of 1000 runs, 100 chatty runs.

    python bench/bench_tasks.py [--rounds 3] [--running 1000] [--writers 100]

Prints figure / pymgr / baseline / ratio / target, writes bench/results/tasks.json.

How it measures (one daemon, started here on temporary sockets, state in a
temporary directory; never ./var):

1. **Burst of starts.** 100 ``POST /v1/tasks`` sent at once on 100
   connections; the clock stops when the 100th ``running`` state event
   arrives on an ``/v1/events`` stream opened before. Baseline, in the same
   round: ``subprocess.Popen`` of the same command (``/bin/sleep 3600``, new
   session, empty environment, stdio to /dev/null) 100 times from this
   process. Rounds alternate the two; the ratio is the median of the rounds.
   The daemon's and the keeper's CPU time over the burst is reported too:
   on a shared, noisy machine it moves less than wall time. So is the
   burst's whole CPU bill, both ways (all CPU times here are from
   ``/proc/PID/task/*/schedstat``, in nanoseconds)
   (nanoseconds on a CPU): Popen's parent plus its 100 children (their exec
   and start-up) against pymgr's daemon, keeper, runs and this client. On N
   CPUs nothing that costs C of CPU ends before C / N: that bound, divided by
   Popen's wall time, is the lowest ratio this machine allows pymgr
   (printed as "CPU floor").
2. **1000 running tasks** (``/bin/sleep``): the daemon's thread count, its
   RSS growth per running task (RSS with 1000 running minus RSS before, after
   a warm-up that started and ended 100 runs), and the p99 latency of
   ``GET /v1/health`` (2000 requests on one keep-alive connection) under that
   load, against the same figure with no task (baseline).
3. **100 tasks each writing 1 MiB/s** for a few seconds: ``GET /v1/health``
   p99 meanwhile, and whether any task fell behind (a blocked writer would:
   each must have written >= 90% of 1 MiB/s, read from its log's logical
   end); the keeper's CPU share is reported too.

The per-identity rate limit and the caps on active runs are raised and the policy allows everything in
the daemon's config: this measures the task engine, not the guards. The client side is raw HTTP/1.1 on asyncio
Unix sockets (no client library), so its own cost stays small.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

#: Writes 64 KiB 16 times a second: 1 MiB/s, on schedule (it catches up when late).
WRITER = (
    "import os, time\n"
    "chunk = b'x' * 65535 + b'\\n'\n"
    "t0 = time.monotonic(); n = 0\n"
    "while True:\n"
    "    due = t0 + n / 16\n"
    "    now = time.monotonic()\n"
    "    if due > now: time.sleep(due - now)\n"
    "    os.write(1, chunk); n += 1\n"
)

CONFIG = """
state_dir = "state"
log_level = "warning"

[http]
unix_socket = "pymgr.sock"
socket_mode = "0600"

[limits]
rate_per_s = 1000000
rate_burst = 1000000

[[policy.rules]]
name = "bench: the benchmark's own user may do everything"
subjects = ["any"]
actions = ["*"]

[modules]
enabled = ["tasks"]

[tasks]
stop_grace_s = 1
keeper_idle_exit_s = 1
# 1000 runs at once from one caller: the caps on active runs are raised, as the rate limit is.
max_active = 5000
max_active_per_caller = 5000

[tasks.types.sleep]
argv = ["/bin/sleep", "3600"]
cwd = "/"

[tasks.types.writer]
argv = ["{python}", "-c", WRITER]
cwd = "/"
log_max_bytes = 4194304
log_keep = 1
""".replace("WRITER", json.dumps(WRITER))


# -- a minimal HTTP/1.1 client over a Unix socket ------------------------------------------


class Conn:
    """One keep-alive connection; requests in sequence."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: str) -> Conn:
        return cls(*await asyncio.open_unix_connection(path))

    async def request(self, method: str, target: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {target} HTTP/1.1\r\nhost: pymgr\r\ncontent-length: {len(data)}\r\n"
        self.writer.write(head.encode() + (b"content-type: application/json\r\n" if data else b"") + b"\r\n" + data)
        status, headers = await read_head(self.reader)
        return status, await self.reader.readexactly(int(headers.get("content-length", "0")))

    def close(self) -> None:
        self.writer.close()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def events(path: str, seen: dict[int, float], ready: asyncio.Event) -> None:
    """Read GET /v1/events (chunked), noting when each run was first seen running."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"GET /v1/events HTTP/1.1\r\nhost: pymgr\r\n\r\n")
    await read_head(reader)
    buffer = b""
    try:
        while size := int((await reader.readline()).strip() or b"0", 16):
            buffer += await reader.readexactly(size + 2)
            *blocks, buffer = buffer.replace(b"\r\n", b"").split(b"\n\n")
            for block in blocks:
                ready.set()
                if b"event: state" in block and b'"state":"running"' in block:
                    data = json.loads(block.split(b"data: ", 1)[1])
                    seen.setdefault(data["id"], time.perf_counter())
    finally:
        writer.close()


# -- the daemon ------------------------------------------------------------------------------


def start_daemon(directory: Path) -> subprocess.Popen[bytes]:
    (directory / "pymgr.toml").write_text(CONFIG)
    log = open(directory / "daemon.log", "wb")  # noqa: SIM115 - kept open for the daemon's life
    process = subprocess.Popen(
        [sys.executable, "-m", "pymgr", "serve", "--config", str(directory / "pymgr.toml")],
        stdout=log, stderr=subprocess.STDOUT, cwd=directory,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (directory / "pymgr.sock").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"daemon did not start:\n{(directory / 'daemon.log').read_text()}")
        time.sleep(0.05)
    return process


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def keeper_pid(directory: Path) -> int:
    return int((directory / "state" / "run" / "keeper.lock").read_text().split()[0])


# -- the figures -------------------------------------------------------------------------------


def on_cpu_s(pid: int) -> float:
    """Seconds process ``pid`` (every thread) has run on a CPU: /proc/PID/task/*/schedstat, in ns."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that just ended
    return total / 1e9


def popen_burst(count: int) -> tuple[float, float, float]:
    """Seconds to Popen ``count`` commands; the CPU seconds of this process and of the children meanwhile."""
    cpu_before = on_cpu_s(os.getpid())
    started = time.perf_counter()
    processes = [
        subprocess.Popen(["/bin/sleep", "3600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, env={})
        for _ in range(count)
    ]  # fmt: skip
    took = time.perf_counter() - started
    parent = on_cpu_s(os.getpid()) - cpu_before
    time.sleep(0.1)  # the last children finish starting up (their share of the bill, as for pymgr's runs)
    children = sum(on_cpu_s(process.pid) for process in processes)
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()
    return took, parent, children


async def start_many(
    path: str, type_name: str, count: int, mark: Callable[[], None] | None = None
) -> tuple[float, list[int]]:
    """Start ``count`` runs at once; seconds until every one was seen running, and their ids.

    ``mark`` is called when the clock starts and when it stops (the CPU bill's window).
    """
    seen: dict[int, float] = {}
    ready = asyncio.Event()
    watcher = asyncio.create_task(events(path, seen, ready))
    await asyncio.wait_for(ready.wait(), 30)
    conns = await asyncio.gather(*(Conn.open(path) for _ in range(count)))
    await asyncio.sleep(0.05)  # the daemon has taken the connections: the clock measures the starts only
    if mark is not None:
        mark()
    started = time.perf_counter()
    replies = await asyncio.gather(*(c.request("POST", "/v1/tasks", {"type": type_name}) for c in conns))
    ids = [json.loads(body)["result"]["id"] for status, body in replies if status == 202]
    if len(ids) != count:
        raise SystemExit(f"only {len(ids)} of {count} starts accepted: {replies[0]}")
    deadline = time.monotonic() + 120
    while not all(i in seen for i in ids):
        if time.monotonic() > deadline:
            raise SystemExit(f"{sum(i in seen for i in ids)} of {count} runs running after 120 s")
        await asyncio.sleep(0.001)
    took = max(seen[i] for i in ids) - started
    if mark is not None:
        mark()
    watcher.cancel()
    for conn in conns:
        conn.close()
    return took, ids


async def kill_all(path: str, ids: list[int]) -> float:
    """End runs fast (SIGKILL to each pid) and wait until the daemon recorded every end; their CPU seconds."""
    conn = await Conn.open(path)
    runs_cpu = 0.0
    for task_id in ids:
        _, body = await conn.request("GET", f"/v1/tasks/{task_id}")
        pid = json.loads(body)["result"]["pid"]
        if pid:
            try:
                runs_cpu += on_cpu_s(pid)
            except FileNotFoundError:
                pass  # ended already
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # ended already
    deadline = time.monotonic() + 120
    while True:
        _, body = await conn.request("GET", "/v1/tasks?state=running")
        if not json.loads(body)["result"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    conn.close()
    return runs_cpu


async def health_p99(path: str, count: int) -> float:
    conn = await Conn.open(path)
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        status, _ = await conn.request("GET", "/v1/health")
        latencies.append(time.perf_counter() - started)
        assert status == 200
    conn.close()
    latencies.sort()
    return latencies[int(len(latencies) * 0.99) - 1] * 1000


async def measure(directory: Path, daemon: subprocess.Popen[bytes], args: argparse.Namespace) -> dict[str, Any]:
    path = str(directory / "pymgr.sock")
    figures: dict[str, Any] = {"burst": []}
    _, ids = await start_many(path, "sleep", 100)  # warm-up: imports, SQLite pages, the keeper
    await kill_all(path, ids)
    keeper = keeper_pid(directory)
    for _ in range(args.rounds):
        popen_s, popen_parent, popen_children = popen_burst(100)
        marks: list[tuple[float, float, float]] = []
        pymgr_s, ids = await start_many(
            path, "sleep", 100, mark=lambda: marks.append((on_cpu_s(daemon.pid), on_cpu_s(keeper), on_cpu_s(os.getpid())))
        )  # fmt: skip
        (d0, k0, c0), (d1, k1, c1) = marks
        daemon_cpu, keeper_cpu, client_cpu = d1 - d0, k1 - k0, c1 - c0
        runs_cpu = await kill_all(path, ids)
        bill = daemon_cpu + keeper_cpu + runs_cpu + client_cpu
        floor = bill / (os.cpu_count() or 1) / popen_s
        figures["burst"].append({"pymgr_s": pymgr_s, "popen_s": popen_s, "ratio": pymgr_s / popen_s,
                                 "daemon_cpu_s": daemon_cpu, "keeper_cpu_s": keeper_cpu, "runs_cpu_s": runs_cpu,
                                 "client_cpu_s": client_cpu, "popen_parent_cpu_s": popen_parent,
                                 "popen_children_cpu_s": popen_children, "cpu_floor_ratio": floor})  # fmt: skip
        print(f"  burst: pymgr {pymgr_s * 1000:.0f} ms, Popen {popen_s * 1000:.0f} ms; CPU: pymgr daemon "
              f"{daemon_cpu * 1000:.0f} + keeper {keeper_cpu * 1000:.0f} + runs {runs_cpu * 1000:.0f} + client "
              f"{client_cpu * 1000:.0f} ms, Popen {popen_parent * 1000:.0f} + children {popen_children * 1000:.0f} ms; "
              f"CPU floor {floor:.2f}x", flush=True)  # fmt: skip
    figures["idle_threads"] = proc_status(daemon.pid, "Threads")
    figures["idle_p99_ms"] = await health_p99(path, 2000)
    rss_before = proc_status(daemon.pid, "VmRSS")
    running: list[int] = []
    while len(running) < args.running:
        running += (await start_many(path, "sleep", min(100, args.running - len(running))))[1]
    await asyncio.sleep(1.0)
    figures["running"] = len(running)
    figures["threads"] = proc_status(daemon.pid, "Threads")
    figures["rss_kib_per_task"] = (proc_status(daemon.pid, "VmRSS") - rss_before) / len(running)
    figures["loaded_p99_ms"] = await health_p99(path, 2000)
    print(f"  {len(running)} running: p99 {figures['loaded_p99_ms']:.1f} ms", flush=True)
    await kill_all(path, running)
    figures.update(await writers(directory, path, args.writers))
    return figures


async def writers(directory: Path, path: str, count: int) -> dict[str, Any]:
    _, ids = await start_many(path, "writer", count)
    keeper = keeper_pid(directory)
    await asyncio.sleep(1.0)  # every writer is up to speed
    conn = await Conn.open(path)
    ends_before = [await log_end(conn, i) for i in ids]
    cpu_before, wall_before = on_cpu_s(keeper), time.perf_counter()
    p99 = await health_p99(path, 2000)
    await asyncio.sleep(max(0.0, 4.0 - (time.perf_counter() - wall_before)))
    wall = time.perf_counter() - wall_before
    keeper_cpu = (on_cpu_s(keeper) - cpu_before) / wall
    rates = [(await log_end(conn, i) - before) / wall / 2**20 for i, before in zip(ids, ends_before, strict=True)]
    conn.close()
    await kill_all(path, ids)
    print(f"  {count} writers: p99 {p99:.1f} ms, slowest writer {min(rates):.2f} MiB/s", flush=True)
    return {"writers": count, "writers_p99_ms": p99, "slowest_writer_mib_s": min(rates),
            "writers_blocked": sum(r < 0.9 for r in rates), "keeper_cpu_share": keeper_cpu}  # fmt: skip


async def log_end(conn: Conn, task_id: int) -> int:
    _, body = await conn.request("POST", "/v1/modules/tasks/logs", {"id": task_id, "limit": 0})
    return int(json.loads(body)["result"]["end"])


# -- the report ---------------------------------------------------------------------------------


def table(f: dict[str, Any]) -> tuple[str, list[bool]]:
    burst = statistics.median(r["ratio"] for r in f["burst"])
    rows = [
        ("100 starts until all running (ms)", statistics.median(r["pymgr_s"] for r in f["burst"]) * 1000,
         statistics.median(r["popen_s"] for r in f["burst"]) * 1000, burst, "ratio <= 1.5", burst <= 1.5),
        (f"daemon threads, {f['running']} running", f["threads"], f["idle_threads"], f["threads"] / f["idle_threads"],
         "<= 10", f["threads"] <= 10),
        ("daemon RSS growth per running task (KiB)", f["rss_kib_per_task"], 20.0, f["rss_kib_per_task"] / 20.0,
         "<= 20 KiB", f["rss_kib_per_task"] <= 20.0),
        (f"GET /v1/health p99 (ms), {f['running']} running", f["loaded_p99_ms"], f["idle_p99_ms"],
         f["loaded_p99_ms"] / f["idle_p99_ms"], "< 20 ms", f["loaded_p99_ms"] < 20),
        (f"GET /v1/health p99 (ms), {f['writers']} x 1 MiB/s", f["writers_p99_ms"], f["idle_p99_ms"],
         f["writers_p99_ms"] / f["idle_p99_ms"], "< 50 ms", f["writers_p99_ms"] < 50),
        ("writers below 0.9 MiB/s (blocked)", f["writers_blocked"], 0, None, "0", f["writers_blocked"] == 0),
        ("slowest writer (MiB/s)", f["slowest_writer_mib_s"], 1.0, f["slowest_writer_mib_s"], ">= 0.9",
         f["slowest_writer_mib_s"] >= 0.9),
    ]  # fmt: skip
    lines = [f"{'figure':44} {'pymgr':>10} {'baseline':>10} {'ratio':>7}  target"]
    for name, value, base, ratio, target, ok in rows:
        shown = "-" if ratio is None else f"{ratio:.2f}"
        lines.append(f"{name:44} {value:>10.2f} {base:>10.2f} {shown:>7}  {target} {'ok' if ok else 'MISSED'}")
    def per_start(name: str) -> float:  # ms per start, median of the rounds (100 starts a round)
        return statistics.median(r[name] for r in f["burst"]) * 10

    lines.append(f"(CPU per start in the burst: daemon {per_start('daemon_cpu_s'):.2f} ms, keeper "
                 f"{per_start('keeper_cpu_s'):.2f} ms, the run itself {per_start('runs_cpu_s'):.2f} ms, this client "
                 f"{per_start('client_cpu_s'):.2f} ms; Popen: parent {per_start('popen_parent_cpu_s'):.2f} ms, "
                 f"child {per_start('popen_children_cpu_s'):.2f} ms)")  # fmt: skip
    lines.append(f"(CPU floor of the burst on {os.cpu_count()} CPUs: pymgr's whole CPU bill / CPUs = "
                 f"{statistics.median(r['cpu_floor_ratio'] for r in f['burst']):.2f}x Popen's wall time, "
                 f"the lowest ratio this machine allows)")  # fmt: skip
    lines.append(f"(keeper CPU while {f['writers']} tasks wrote: {f['keeper_cpu_share'] * 100:.0f}% of one core; "
                 f"baseline of the burst: subprocess.Popen; of the others: the same figure with no task)")  # fmt: skip
    return "\n".join(lines), [row[-1] for row in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the burst figure (noisy: the median counts)")
    parser.add_argument("--running", type=int, default=1000, help="tasks running at once for figure 2")
    parser.add_argument("--writers", type=int, default=100, help="tasks writing 1 MiB/s for figure 3")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="pymgr-bench-tasks-"))
    daemon = start_daemon(directory)
    started = time.monotonic()
    try:
        figures = asyncio.run(measure(directory, daemon, args))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
        shutil.rmtree(directory, ignore_errors=True)
    text, oks = table(figures)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    result = {
        "figures": figures,
        "seconds": round(time.monotonic() - started, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "loadavg": os.getloadavg()},
    }  # fmt: skip
    (RESULTS / "tasks.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"raw results: {RESULTS / 'tasks.json'}")
    return 1 if args.strict and not all(oks) else 0


if __name__ == "__main__":
    sys.exit(main())
