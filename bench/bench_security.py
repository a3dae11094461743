"""What security costs: server CPU per request with auth and audit on, and off, in the same run.

Run it: ``python bench/bench_security.py`` (``make bench`` runs it too). It prints ``path, with
auth+audit, without, ratio`` for the Unix-socket path and the signed-TCP path, and writes the figures
(with the machine they were measured on) to bench/results/security.json.
Target: each ratio <= 1.3 (issue 4).

How:
- Two daemons, each started by this script in ``--serve`` mode with the
  same config (Unix socket, TCP listener, one HMAC key, a policy, the audit
  log on, a rate limit too high to refuse anything): "with" is the daemon
  exactly as ``pymgr serve`` runs it; "without" swaps ``build_security``
  for the seed's wiring (plain dispatcher, no policy, no audit line, no
  guard in front of the app; the same HTTP server and limits). No config
  switch turns security off, on purpose: only this bench can.
- The call is ``POST /v1/modules/demo/echo`` with ``{"a": 1}``, on persistent
  connections from ``THREADS`` client threads. Signed-TCP requests each
  carry their own nonce (built before the window, so the client's HMAC cost
  is not in the window; only the server's check is measured). The "without"
  TCP requests are the same requests unsigned.
- Server CPU is utime + stime of the daemon from /proc/PID/stat (bench/_proc.py)
  before and after ``REQUESTS`` requests; rounds alternate "with" and
  "without", and the median of ``ROUNDS`` is reported.
- ``--layers`` adds a "with" daemon per entry of ``LAYERS``, each with one
  layer taken out, measured in the same rounds against the same "without":
  where the difference goes (docs/performance.md, "Security overhead").
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._proc import cpu_seconds, machine  # noqa: E402

#: Requests per measurement: ~1-2 s of server CPU, so the 10 ms tick of
#: /proc/PID/stat is about 1% of it.
REQUESTS = 10_000
#: Requests sent before the first window, per daemon and path: caches and code paths warm.
WARMUP = 1_000
#: Rounds, each "with" then "without" back to back; the reported ratio is the
#: median of the rounds' ratios, which cancels slow drifts of the machine
#: (other processes, CPU frequency) better than a ratio of medians.
ROUNDS = 7
#: Client threads, each on its own persistent connection.
THREADS = 4
TARGET_RATIO = 1.3
KEY_ID = "bench"
SECRET = "bench-secret-0123456789abcdef"
BODY = b'{"a":1}'
RESULT = REPO / "bench" / "results" / "security.json"

CONFIG = f"""
state_dir = "state"
log_level = "info"

[http]
unix_socket = "pymgr.sock"
tcp = "127.0.0.1:0"

[auth]
# Every signed request of the run is inside one replay window.
nonce_cache_max = 1000000

[[auth.keys]]
id = "{KEY_ID}"
secret = "{SECRET}"

[security]
public_secrets = true  # the bench's own key, in a temporary directory

[[policy.rules]]
name = "the bench client (this uid) and its key"
subjects = ["owner", "key:{KEY_ID}"]
actions = ["demo.*"]

# High enough never to refuse: the limiter runs (and is measured), it just never says no.
[limits]
rate_per_s = 1e12
rate_burst = 1000000000000

[modules]
enabled = ["demo"]
"""


# --- the server side (--serve) ------------------------------------------------------


class _Unguarded:
    """The seed's wiring, for the "without" daemon: what ``build_security`` replaced."""

    edge = None
    verifier = None

    def __init__(self, config: Any, registry: Any, tasks: Any) -> None:
        self.config = config

    def dispatcher(self, registry: Any, metrics: Any = None) -> Any:
        from pymgr.core.dispatch import Dispatcher

        return Dispatcher(registry, metrics=metrics)

    def close(self) -> None:
        return None


def _unguarded_app(app: Any, **checks: Any) -> Any:
    """The HTTP app with no signature or rate check in front (the server and its limits stay: they are hardening)."""
    return app


#: ``--layers``: "with" daemons with one layer out, by name -> what is taken out.
LAYERS = {
    "no-audit": "no audit line",
    "audit-unwritten": "the audit line built, not written",
    "no-signature": "no signature check (the key id taken as given)",
}


def _take_out(layer: str) -> None:
    """Take one security layer out of this ("with") daemon, for ``--layers``."""
    if layer == "no-audit":
        from pymgr.auth.audit import Auditor

        Auditor.record = lambda self, *args, **fields: None  # type: ignore[method-assign]
    elif layer == "audit-unwritten":
        from pymgr.auth.audit import AuditLog

        AuditLog.write_line = lambda self, line: None  # type: ignore[method-assign]
    elif layer == "no-signature":
        from pymgr.transport.http.guard import GuardedApp

        GuardedApp._authenticate = lambda self, request: self._signed_identity(request.identity, KEY_ID)  # type: ignore[method-assign]


def serve(mode: str, config_path: str) -> int:
    import logging

    import pymgr.daemon as daemon
    from pymgr.service.eventloop import new_runner
    from pymgr.config import load_config

    if mode == "without":
        daemon.build_security = _Unguarded  # type: ignore[assignment,attr-defined]
        daemon.GuardedApp = _unguarded_app  # type: ignore[assignment,misc]
    elif mode in LAYERS:
        _take_out(mode)
    config = load_config(Path(config_path))
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with new_runner() as runner:
        runner.run(daemon.run(config))
    return 0


# --- the client side ----------------------------------------------------------------


class Daemon:
    def __init__(self, mode: str, workdir: Path) -> None:
        self.dir = workdir / mode
        self.dir.mkdir()
        config = self.dir / "pymgr.toml"
        config.write_text(CONFIG)
        self.log = self.dir / "daemon.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", mode, str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        self.unix, self.tcp = self._wait_ready()

    def _wait_ready(self) -> tuple[str, tuple[str, int]]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if " pymgr: ready " in line:
                    ready = json.loads(line.split(" pymgr: ready ", 1)[1])
                    unix = next(a for a in ready["http"] if a.startswith("unix:")).removeprefix("unix:")
                    host, port = (
                        next(a for a in ready["http"] if a.startswith("tcp:"))
                        .removeprefix("tcp:")
                        .rsplit(":", 1)
                    )
                    return unix, (host, int(port))
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"daemon not ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def plain_request() -> bytes:
    return (
        b"POST /v1/modules/demo/echo HTTP/1.1\r\nHost: pymgr\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
    )


def signed_requests(count: int) -> list[bytes]:
    from pymgr.auth.signing import signed_headers

    now = int(time.time())
    out = []
    for _ in range(count):
        headers = signed_headers(
            KEY_ID,
            SECRET.encode(),
            "POST",
            "/v1/modules/demo/echo",
            "",
            BODY,
            timestamp=now,
            nonce=secrets.token_urlsafe(18),
        )
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
        out.append(
            b"POST /v1/modules/demo/echo HTTP/1.1\r\nHost: pymgr\r\ncontent-type: application/json\r\n"
            + extra
            + b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
        )
    return out


def _read_reply(sock: socket.socket, buffer: bytearray) -> bytes:
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("server closed the connection")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(rest) < length:
        rest += sock.recv(65536)
    buffer[:] = rest[length:]
    if not head.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"unexpected reply: {head[:200]!r} {rest[:200]!r}")
    return rest[:length]


def _client(address: str | tuple[str, int], requests: list[bytes]) -> None:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        buffer = bytearray()
        for request in requests:
            sock.sendall(request)
            _read_reply(sock, buffer)


def load(pid: int, address: str | tuple[str, int], requests: list[bytes]) -> float:
    """Server CPU seconds per request over ``requests``, split across THREADS connections."""
    shares = [requests[i::THREADS] for i in range(THREADS)]
    errors: list[BaseException] = []

    def run(share: list[bytes]) -> None:
        try:
            _client(address, share)
        except BaseException as exc:  # reported below: a failed run is not a fast one
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(share,)) for share in shares]
    before = cpu_seconds(pid)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = cpu_seconds(pid)
    if errors:
        raise RuntimeError(f"load against {address} failed: {errors[0]!r}")
    return (after - before) / len(requests)


def measure(on: Daemon, off: Daemon, layers: dict[str, Daemon] | None = None) -> dict[str, dict[str, Any]]:
    plain = plain_request()
    withs = {"with": on, **(layers or {})}
    results: dict[str, dict[str, Any]] = {}
    for name in ("unix", "tcp_signed"):

        def requests(daemon: Daemon, count: int) -> tuple[Any, list[bytes]]:
            if name == "unix":
                return daemon.unix, [plain] * count
            return daemon.tcp, ([plain] * count if daemon is off else signed_requests(count))

        for daemon in (*withs.values(), off):
            load(daemon.proc.pid, *requests(daemon, WARMUP))
        rounds = []
        for _ in range(ROUNDS):
            spent = {
                label: load(daemon.proc.pid, *requests(daemon, REQUESTS)) for label, daemon in withs.items()
            }
            without_s = load(off.proc.pid, *requests(off, REQUESTS))
            rounds.append(
                {f"{label}_us": round(s * 1e6, 2) for label, s in spent.items()}
                | {"without_us": round(without_s * 1e6, 2)}
            )
        results[name] = _ratios(rounds, "with")
        results[name]["layers"] = {label: _ratios(rounds, label) for label in layers or {}}
    return results


def _ratios(rounds: list[dict[str, float]], label: str) -> dict[str, Any]:
    ratios = [r[f"{label}_us"] / r["without_us"] for r in rounds]
    return {
        "with_us": statistics.median(r[f"{label}_us"] for r in rounds),
        "without_us": statistics.median(r["without_us"] for r in rounds),
        "ratio": round(statistics.median(ratios), 3),
        "rounds": rounds if label == "with" else None,
        "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
    }


def main() -> int:
    with_layers = "--layers" in sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="pymgr-bench-security-") as tmp:
        on = Daemon("with", Path(tmp))
        layers: dict[str, Daemon] = {}
        try:
            off = Daemon("without", Path(tmp))
            for layer in LAYERS if with_layers else ():
                layers[layer] = Daemon(layer, Path(tmp))
            try:
                results = measure(on, off, layers)
                audit_lines = sum(1 for _ in (on.dir / "state" / "audit.log").open())
            finally:
                off.stop()
                for daemon in layers.values():
                    daemon.stop()
        finally:
            on.stop()
    print(f"{'path':<14}{'with auth+audit':>17}{'without':>11}{'ratio':>8}   (rounds' ratios)")
    for name, label in (("unix", "unix socket"), ("tcp_signed", "signed TCP")):
        r = results[name]
        flag = "" if r["ratio"] <= TARGET_RATIO else f"  over the {TARGET_RATIO}x target"
        low, high = r["ratio_range"]
        print(
            f"{label:<14}{r['with_us']:>14.1f} µs{r['without_us']:>8.1f} µs{r['ratio']:>7.2f}x   ({low:.2f}-{high:.2f}){flag}"
        )
        for layer, lr in r["layers"].items():
            low, high = lr["ratio_range"]
            print(
                f"  {LAYERS[layer]:<52}{lr['with_us']:>8.1f} µs{lr['ratio']:>7.2f}x   ({low:.2f}-{high:.2f})"
            )
    print(
        f"server CPU per request (median of {ROUNDS} rounds of {REQUESTS}); load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(
        json.dumps(
            {
                "what": "server CPU per request (utime+stime from /proc/PID/stat), POST /v1/modules/demo/echo",
                "target_ratio": TARGET_RATIO,
                "requests_per_round": REQUESTS,
                "rounds": ROUNDS,
                "client_threads": THREADS,
                "results": results,
                "audit_lines_in_current_file": audit_lines,
                "load_average_1m": os.getloadavg()[0],
                "machine": machine(),
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULT.relative_to(REPO)}")
    return 0 if all(r["ratio"] <= TARGET_RATIO for r in results.values()) else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        raise SystemExit(serve(sys.argv[2], sys.argv[3]))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
