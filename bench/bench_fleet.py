"""The fleet against RQ and Celery: jobs/s submitted and completed through three workers, and start latency.

    python -m bench.bench_fleet [--jobs 1000] [--warmup 100] [--latency-jobs 100] [--latency-rate 15]
                                [--systems pymgr,pymgr-action,rq,celery] [--rq-worker fork|simple] [--strict]

Prints pymgr, RQ and Celery side by side and the target, writes
bench/results/fleet.json (docs/fleet.md, "Performance", reads the table).

How it measures (issue 16):

- ONE ``redis-server``, started here on a Unix socket in a temporary
  directory (no persistence), serves every system, one after the other in
  the same run; each system's workers are started before and stopped after
  its own measurement, so none idles beside another's.
- pymgr: three daemons as fleet hosts of one tag and a ``FleetClient``
  submitting to the tag (``fleet_pymgr.py``): task jobs of the type ``noop``
  (``/bin/true``: a process per job; the target's row) and, as
  ``pymgr-action``, action jobs (``demo.echo``, in the daemon). RQ and
  Celery: three workers each doing a no-op Python function
  (``fleet_peers.py`` says which workers and why).
- One submitter, this process, submits one job after the other.
- **Throughput run**: ``--jobs`` submitted as fast as the client returns,
  while the workers take them. *Submitted/s*: jobs over the time of the
  submit loop. *Completed/s*: jobs over the time from the first submit to
  the last job's end, as the system recorded it. *Loaded p50*: the median
  submit -> start of that run, mostly the time a job waits behind the
  others. *CPU ms/job*: CPU time of the workers (with their children: runs,
  work horses, pool children), of Redis and of the submit loop, per job.
- **Latency run**: ``--latency-jobs`` submitted at ``--latency-rate`` a
  second (below every system's throughput, RQ's ~30/s included when the
  machine is loaded: above it, RQ's latency is its backlog): *p50*, *p99* of submit ->
  start. Submit: pymgr the submitter's clock before ``submit``, RQ the
  job's ``enqueued_at``, Celery the submitter's clock in the task's args.
  Start: pymgr ``running_at`` in the job's hash (the run's process has
  started, or the action is called), RQ ``started_at`` (in the work horse,
  before the function), Celery the clock the task reads as it starts. Every
  clock is this machine's ``time.time()``.
- A warm-up of ``--warmup`` jobs runs first on each system, not recorded.
- The target (issue 16): pymgr's task jobs complete at least 2x RQ's jobs/s,
  with a lower p50, doing its signing, policy and audit.
"""

from __future__ import annotations

import argparse
import compileall
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil
import redis

from bench._proc import loadavg, machine
from bench.servers import REPO, Server, ServerError, has_module, spawn_server

RESULTS = Path(__file__).resolve().parent / "results"
#: Throughput of pymgr over RQ's, and p50 below RQ's: the target of issue 16.
TARGET_RATIO = 2.0
#: What can be measured: pymgr's task jobs (the target's), its action jobs, RQ and Celery.
SYSTEMS = ("pymgr", "pymgr-action", "rq", "celery")
#: Seconds Redis gets to answer PING.
REDIS_START_S = 10.0


class System(Protocol):
    name: str
    note: str

    def start(self) -> None: ...
    def submit(self) -> tuple[str, float]: ...
    def remaining(self, ids: list[str]) -> list[str]: ...
    def timestamps(self, ids: list[str], sent: list[float]) -> list[tuple[float, float, float, bool]]: ...
    def pids(self) -> list[int]: ...
    def stop(self) -> None: ...


@dataclass
class Figures:
    system: str
    note: str
    jobs: int
    failed: int
    submitted_per_s: float
    completed_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    #: The p50 of the throughput run: mostly the time a job waits behind the others.
    loaded_p50_ms: float
    #: CPU per job of the workers (with their children: runs, work horses, pool children), of Redis,
    #: and of the submitter's submit loop, in the throughput run.
    worker_cpu_ms: float
    redis_cpu_ms: float
    submit_cpu_ms: float


def start_redis(directory: Path) -> tuple[Server, Path]:
    """A redis-server on a Unix socket in ``directory``, nothing kept on disk; the server and its socket."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerError("redis-server is missing: `make bench` installs it (apt-get install redis-server)")
    socket = directory / "redis.sock"
    argv = [binary, "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(directory), "--daemonize", "no"]
    server = spawn_server("redis", argv, directory)
    deadline = time.monotonic() + REDIS_START_S
    while True:
        try:
            with redis.Redis(unix_socket_path=str(socket)) as client:
                client.ping()
                return server, socket
        except (redis.ConnectionError, FileNotFoundError):
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise ServerError(f"redis-server did not answer:\n{server.log_tail()}") from None
            time.sleep(0.02)


def wait_done(system: System, ids: list[str], timeout_s: float) -> None:
    """Poll until every job has ended; the figures come from recorded timestamps, not from this poll."""
    deadline = time.monotonic() + timeout_s
    left = ids
    while left:
        left = system.remaining(left)
        if left and time.monotonic() > deadline:
            raise TimeoutError(
                f"{system.name}: {len(left)} of {len(ids)} jobs not ended after {timeout_s:g} s"
            )
        time.sleep(0.1)


def run_jobs(
    system: System, count: int, timeout_s: float, rate: float | None = None
) -> tuple[list[str], list[float], float, float]:
    """Submit ``count`` jobs (as fast as the client returns, or ``rate`` a second) and wait for their ends.

    Returns the ids, the submit times, and the seconds and CPU seconds the submit loop took (the wait for
    the ends polls Redis, as no submitter has to: it is not counted).
    """
    ids, sent = [], []
    began, began_cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        if rate is not None:
            time.sleep(max(0.0, began + i / rate - time.perf_counter()))
        job_id, at = system.submit()
        ids.append(job_id)
        sent.append(at)
    submit_s, submit_cpu_s = time.perf_counter() - began, time.process_time() - began_cpu
    wait_done(system, ids, timeout_s)
    return ids, sent, submit_s, submit_cpu_s


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def succeeded(
    system: System, rows: list[tuple[float, float, float, bool]]
) -> list[tuple[float, float, float, bool]]:
    ok = [row for row in rows if row[3] and not math.isnan(row[1]) and not math.isnan(row[2])]
    if not ok:
        raise RuntimeError(f"{system.name}: no job succeeded")
    return ok


def latencies_ms(rows: list[tuple[float, float, float, bool]]) -> list[float]:
    return [(started - at) * 1000 for at, started, _, _ in rows]


def cpu_s(pids: list[int]) -> float:
    """CPU seconds of these processes and their descendants alive now, with the reaped children they waited for.

    A child that ends during a run is counted by its parent's ``children_*`` times
    once waited for (RQ's work horses, pymgr's runs through the keeper).
    """
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in family:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system + times.children_user + times.children_system
    return total


def throughput(system: System, args: argparse.Namespace, redis_pid: int) -> dict[str, Any]:
    """Every job at once: jobs/s submitted and completed, the CPU each side spent per job."""
    before = cpu_s(system.pids()), cpu_s([redis_pid])
    ids, sent, submit_s, submit_cpu_s = run_jobs(system, args.jobs, args.timeout)
    rows = system.timestamps(ids, sent)
    ok = succeeded(system, rows)
    completed_s = max(ended for _, _, ended, _ in ok) - min(at for at, *_ in rows)
    return {
        "failed": len(rows) - len(ok),
        "submitted_per_s": args.jobs / submit_s,
        "completed_per_s": len(ok) / completed_s,
        "loaded_p50_ms": statistics.median(latencies_ms(ok)),
        "worker_cpu_ms": (cpu_s(system.pids()) - before[0]) / args.jobs * 1000,
        "redis_cpu_ms": (cpu_s([redis_pid]) - before[1]) / args.jobs * 1000,
        "submit_cpu_ms": submit_cpu_s / args.jobs * 1000,
    }


def measure(system: System, args: argparse.Namespace, redis_pid: int) -> Figures:
    """Warm-up, the throughput run (every job at once), then the latency run (jobs at a steady rate)."""
    try:
        system.start()  # in the try: a start that fails half-way stops what it started
        if args.warmup:
            run_jobs(system, args.warmup, args.timeout)
        burst = throughput(system, args, redis_pid)
        ids, sent, *_ = run_jobs(system, args.latency_jobs, args.timeout, rate=args.latency_rate)
        paced = system.timestamps(ids, sent)
    finally:
        system.stop()
    steady = latencies_ms(succeeded(system, paced))
    burst["failed"] += len(paced) - len(steady)
    return Figures(
        system=system.name,
        note=system.note,
        jobs=args.jobs,
        p50_ms=statistics.median(steady),
        p99_ms=percentile(steady, 0.99),
        max_ms=max(steady),
        **burst,
    )


def systems(workdir: Path, socket: Path, args: argparse.Namespace) -> tuple[list[System], list[str]]:
    """The systems to measure (``--systems``); notes on a peer that is not installed."""
    from bench.fleet_pymgr import PymgrFleet

    url = f"unix://{socket}"
    found: list[System] = []
    if "pymgr" in args.systems:
        found.append(PymgrFleet(workdir / "pymgr", url, max_jobs=args.max_jobs))
    if "pymgr-action" in args.systems:
        found.append(PymgrFleet(workdir / "pymgr-action", url, kind="action", max_jobs=args.max_jobs))
    notes = []
    if "rq" in args.systems:
        if has_module("rq"):
            from bench.fleet_peers import RQPeer

            found.append(RQPeer(workdir / "rq", url, simple=args.rq_worker == "simple"))
        else:
            notes.append("RQ not measured: `rq` is not installed (the bench extra has it)")
    if "celery" in args.systems:
        if has_module("celery"):
            from bench.fleet_peers import CeleryPeer

            found.append(CeleryPeer(workdir / "celery", url, socket))
        else:
            notes.append("Celery not measured: `celery` is not installed (the bench extra has it)")
    return found, notes


def check(figures: list[Figures]) -> tuple[str, bool | None]:
    """The target's line, and whether it holds (None when RQ was not measured)."""
    ours = next((f for f in figures if f.system == "pymgr"), None)
    rq = next((f for f in figures if f.system.startswith("RQ")), None)
    if ours is None or rq is None:
        return "target: not checked (pymgr and RQ were not both measured)", None
    ratio = ours.completed_per_s / rq.completed_per_s
    ok = ratio >= TARGET_RATIO and ours.p50_ms < rq.p50_ms
    verdict = "holds" if ok else "MISSED"
    return (
        f"target: completed/s >= {TARGET_RATIO:g}x {rq.system}'s and a lower p50: "
        f"{ratio:.2f}x, p50 {ours.p50_ms:.1f} vs {rq.p50_ms:.1f} ms: {verdict}"
    ), ok


def table(figures: list[Figures]) -> str:
    head = ("submitted/s", "completed/s", "p50 ms", "p99 ms", "loaded p50", "CPU ms/job", "failed")
    lines = [f"{'':16} " + " ".join(f"{h:>11}" for h in head) + "   (CPU: workers + Redis + submitter)"]
    for f in figures:
        cpu = f"{f.worker_cpu_ms:.1f}+{f.redis_cpu_ms:.2f}+{f.submit_cpu_ms:.2f}"
        lines.append(
            f"{f.system:16} {f.submitted_per_s:>11,.0f} {f.completed_per_s:>11,.0f} {f.p50_ms:>11.1f} "
            f"{f.p99_ms:>11.1f} {f.loaded_p50_ms:>11,.0f} {cpu:>11} {f.failed:>11}"
        )
    lines += [f"  {f.system}: {f.note}" for f in figures]
    return "\n".join(lines)


def _systems(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = set(names) - set(SYSTEMS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"--systems takes {','.join(SYSTEMS)}, comma-separated; not {text!r}"
        )
    return names


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs measured per system")
    parser.add_argument("--warmup", type=int, default=100, help="jobs run first per system, not measured")
    parser.add_argument(
        "--rq-worker", choices=("fork", "simple"), default="fork", help="RQ's Worker (fork) or SimpleWorker"
    )
    parser.add_argument("--latency-jobs", type=int, default=100, help="jobs of the latency run per system")
    parser.add_argument("--latency-rate", type=float, default=15.0, help="jobs/s of the latency run")
    parser.add_argument(
        "--max-jobs", type=int, default=16, help="[fleet] max_jobs of each pymgr host (pymgr's default: 16)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a system gets to end its jobs")
    parser.add_argument("--results", type=Path, default=RESULTS / "fleet.json", help="the JSON file written")
    parser.add_argument(
        "--systems", type=_systems, default=SYSTEMS, help=f"comma-separated, of {','.join(SYSTEMS)}"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    if (
        args.jobs < 1
        or args.latency_jobs < 1
        or args.max_jobs < 1
        or args.warmup < 0
        or args.timeout <= 0
        or args.latency_rate <= 0
    ):
        parser.error(
            "--jobs, --latency-jobs and --max-jobs must be >= 1, --warmup >= 0, --timeout and --latency-rate > 0"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # As pip does for an installed package: the hosts' start must not include compiling pymgr.
    compileall.compile_dir(REPO / "src" / "pymgr", quiet=1)
    workdir = Path(tempfile.mkdtemp(prefix="pymgr-bench-fleet-"))
    began, load_before = time.monotonic(), loadavg()
    try:
        redis_server, socket = start_redis(workdir)
        try:
            found, notes = systems(workdir, socket, args)
            figures = []
            for system in found:
                system_began = time.monotonic()
                figures.append(measure(system, args, redis_server.pid))
                line = table(figures[-1:]).splitlines()[1]
                print(f"{line}  ({time.monotonic() - system_began:.0f} s)", file=sys.stderr, flush=True)
        finally:
            redis_server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    verdict, ok = check(figures)
    print(table(figures), *(f"note: {note}" for note in notes), verdict, sep="\n")
    document: dict[str, Any] = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "seconds": round(time.monotonic() - began, 1),
        "machine": machine(),
        "loadavg": {"before": load_before, "after": loadavg()},
        "redis": _redis_version(),
        "figures": [asdict(f) for f in figures],
        "notes": notes,
        "target": {"text": verdict, "ok": ok},
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(document, indent=1) + "\n")
    print(f"raw results: {args.results}")
    return 1 if args.strict and ok is False else 0


def _redis_version() -> str:
    binary = shutil.which("redis-server") or "redis-server"
    return subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
