"""The load generator: the same client code for pymgr and every baseline.

Rules:
- A ``Target`` is an address, the exact request bytes, how a reply ends
  (``"http"``: an HTTP/1.1 message, parsed by httptools; ``"eof"``: the
  server closes) and whether the connection is kept (``persistent``) or a
  new one is opened per request. Requests are built once, before the run:
  the client's own cost stays low and equal for every server.
- Load comes from ``clients`` processes (multiprocessing, forkserver). Each one
  connects, sends ``WARMUP_REQUESTS`` (the first reply is checked against
  ``Target.expect``: a server that answers with an error is a failed run,
  not a fast one), waits at a barrier with the parent, then runs for the
  measurement window. The parent reads the server's CPU time (``/proc``)
  when the barrier opens and when the window closes.
- A client error ends the run with the error's text; nothing hangs on a
  dead worker (every wait has a timeout).
"""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from typing import Any, Literal

import httptools

from bench._proc import cpu_seconds

#: Requests each client sends before the window opens: connections made,
#: caches and the server's code paths warm.
WARMUP_REQUESTS = 20
#: Seconds a client waits for its workers or a reply before the run is called failed.
WAIT_TIMEOUT_S = 30.0
#: recv() buffer size; every reply measured here is far smaller.
RECV_BYTES = 65536


class LoadError(Exception):
    """A load run failed; the message says which target and why."""


@dataclass(frozen=True)
class Target:
    """One server endpoint and the one request the bench sends it."""

    name: str
    #: A Unix socket path, or (host, port).
    address: str | tuple[str, int]
    request: bytes
    framing: Literal["http", "eof"]
    persistent: bool
    #: Bytes the first reply must contain (checked during warm-up).
    expect: bytes


@dataclass(frozen=True)
class LoadResult:
    requests: int
    wall_s: float
    server_cpu_s: float

    @property
    def throughput(self) -> float:
        return self.requests / self.wall_s

    @property
    def cpu_per_request_us(self) -> float:
        return self.server_cpu_s / self.requests * 1e6


class _Reply:
    """httptools callbacks: just enough to know when a reply is complete."""

    def __init__(self) -> None:
        self.complete = False
        self.body = bytearray()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


def _connect(address: str | tuple[str, int]) -> socket.socket:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(WAIT_TIMEOUT_S)
    sock.connect(address)
    return sock


class Client:
    """One client connection (or one per request) to a target."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._sock: socket.socket | None = None
        self._reply = _Reply()
        self._parser: Any = None

    def request(self, data: bytes | None = None) -> bytes:
        """Send ``data`` (the target's request by default); return the reply's body (``eof``: all bytes)."""
        target = self.target
        if self._sock is None:
            self._sock = _connect(target.address)
            self._parser = httptools.HttpResponseParser(self._reply)
        sock = self._sock
        sock.sendall(target.request if data is None else data)
        body = self._read_http(sock) if target.framing == "http" else self._read_to_eof(sock)
        if not target.persistent:
            self.close()
        return body

    def _read_http(self, sock: socket.socket) -> bytes:
        reply = self._reply
        while not reply.complete:
            data = sock.recv(RECV_BYTES)
            if not data:
                raise LoadError(
                    f"{self.target.name}: the server closed the connection before the reply ended"
                )
            self._parser.feed_data(data)
        status = self._parser.get_status_code()
        if status >= 400:
            raise LoadError(f"{self.target.name}: HTTP {status}: {bytes(reply.body)[:200]!r}")
        body = bytes(reply.body)
        reply.complete = False
        reply.body.clear()
        return body

    @staticmethod
    def _read_to_eof(sock: socket.socket) -> bytes:
        chunks = []
        while data := sock.recv(RECV_BYTES):
            chunks.append(data)
        return b"".join(chunks)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def check_reply(target: Target, body: bytes) -> None:
    """Raise LoadError unless ``body`` contains ``target.expect``."""
    if target.expect not in body:
        raise LoadError(f"{target.name}: reply {body[:300]!r} does not contain {target.expect!r}")


def _worker(target: Target, duration_s: float, barrier: Barrier, results: Any) -> None:
    client = Client(target)
    try:
        check_reply(target, client.request())
        for _ in range(WARMUP_REQUESTS - 1):
            client.request()
    except Exception as exc:  # reported to the parent, which fails the run
        results.put(("error", f"{type(exc).__name__}: {exc}"))
        barrier.abort()
        return
    barrier.wait(WAIT_TIMEOUT_S)
    count = 0
    request = client.request
    end = time.monotonic() + duration_s
    try:
        while time.monotonic() < end:
            request()
            count += 1
    except Exception as exc:  # reported to the parent, which fails the run
        results.put(("error", f"{type(exc).__name__}: {exc}"))
        return
    finally:
        client.close()
    results.put(("ok", count))


def _context() -> Any:
    """forkserver: cheap workers (forked from a process that has imported this module) and
    no fork of a parent that may run threads (pytest, the profiler's load thread)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def run_load(target: Target, server_pid: int, *, clients: int, duration_s: float) -> LoadResult:
    """Drive ``target`` from ``clients`` processes for ``duration_s``; measure the server.

    Raises:
        LoadError: a client failed (connect, a bad reply, a timeout).
    """
    ctx = _context()
    barrier = ctx.Barrier(clients + 1)
    results = ctx.SimpleQueue()
    workers = [
        ctx.Process(target=_worker, args=(target, duration_s, barrier, results)) for _ in range(clients)
    ]
    for worker in workers:
        worker.start()
    try:
        window = _measure_window(barrier, server_pid, duration_s)
    finally:
        for worker in workers:
            worker.join(WAIT_TIMEOUT_S + duration_s)
            if worker.is_alive():
                worker.kill()
    outcomes = []
    while not results.empty():
        outcomes.append(results.get())
    errors = [value for kind, value in outcomes if kind == "error"]
    if errors:
        raise LoadError(f"{target.name}: {errors[0]}")
    if window is None or len(outcomes) != clients:
        raise LoadError(f"{target.name}: {clients - len(outcomes)} of {clients} clients gave no result")
    wall_s, cpu_s = window
    return LoadResult(requests=sum(value for _, value in outcomes), wall_s=wall_s, server_cpu_s=cpu_s)


def _measure_window(barrier: Barrier, server_pid: int, duration_s: float) -> tuple[float, float] | None:
    """Wall time and server CPU time of the window; None if a worker broke the barrier."""
    try:
        barrier.wait(WAIT_TIMEOUT_S)
    except threading.BrokenBarrierError:
        return None  # the worker put its error into the results
    cpu0, t0 = cpu_seconds(server_pid), time.monotonic()
    time.sleep(duration_s)
    cpu1, t1 = cpu_seconds(server_pid), time.monotonic()
    return t1 - t0, cpu1 - cpu0


def latency_samples(target: Target, requests: int) -> list[float]:
    """One client, sequential requests: each round trip in microseconds."""
    client = Client(target)
    try:
        check_reply(target, client.request())
        for _ in range(WARMUP_REQUESTS - 1):
            client.request()
        samples = []
        clock = time.perf_counter_ns
        for _ in range(requests):
            started = clock()
            client.request()
            samples.append((clock() - started) / 1000)
        return samples
    finally:
        client.close()
