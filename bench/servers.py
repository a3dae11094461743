"""Starting and stopping the servers the bench measures, on temporary sockets.

Rules:
- Every server is a child process of the bench, started on a socket in the
  bench's temporary directory or on an ephemeral loopback port, with its
  output in a log file there; ``Server.stop`` ends it (SIGTERM, then
  SIGKILL after ``STOP_TIMEOUT_S``), and ``Fleet`` stops every server it
  started, whatever happened.
- A server is ready when its socket answers a real request (for pymgr also
  when its "ready" log line is out); start-up time is measured from just
  before the process is spawned.
- pymgr runs the demo config exactly as ``make run`` serves it, from a
  copy of ``examples/`` (so ``../var`` lands in the temporary directory),
  with one change: the legacy listener's fixed port becomes port 0.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
EXAMPLES = REPO / "examples"
BIN = Path(sys.executable).parent

#: Seconds a server gets to answer after it is spawned (10x pymgr's target).
START_TIMEOUT_S = 10.0
#: Seconds a server gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 10.0
#: Seconds between readiness probes: fine enough for a 1 s start-up target.
PROBE_INTERVAL_S = 0.002
#: A ``port = N`` line of the demo config (the legacy listener's), made port 0.
FIXED_PORT_LINE = re.compile(r"(?m)^(\s*port\s*=\s*)\d+(\s*(?:#.*)?)$")
#: A ``tcp = "host:N"`` line of the demo config (the HTTP TCP listener's), made port 0.
FIXED_ADDRESS_LINE = re.compile(r'(?m)^(\s*tcp\s*=\s*"[^"]*:)\d+("\s*(?:#.*)?)$')


#: Appended to the demo config: the per-identity rate limit (50/s by default)
#: would turn every throughput figure into "50/s". The limiter stays in the
#: path, so its cost is measured; only its refusal is out of reach.
BENCH_LIMITS = """

# Added by the bench (bench/servers.py): every bench client is uid 0 or 127.0.0.1.
[limits]
rate_per_s = 1e12
rate_burst = 1000000000000
"""


class ServerError(Exception):
    """A server did not start or answer; the message names it and its log."""


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    #: Seconds from spawn to the first answered request.
    start_s: float = 0.0
    #: Addresses and facts (sockets, ports, secrets) the figures need.
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> float:
        """SIGTERM, wait, SIGKILL if needed; returns the seconds it took to exit."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elapsed = time.monotonic() - started
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return elapsed

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def stop_all(servers: list[Server], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop servers together: SIGTERM to each, so that their shutdowns overlap; SIGKILL after ``timeout_s``."""
    for server in servers:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for server in servers:
        try:
            server.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            server.proc.kill()
        server.stop()


def spawn_server(name: str, argv: list[str], workdir: Path, **popen: Any) -> Server:
    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns it; closed below
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=popen.pop("stdout", log), stderr=log, **popen
        )
    finally:
        log.close()
    return Server(name, proc, log_path)


def wait_ready(server: Server, ready: Any, started: float) -> None:
    """Poll ``ready()`` until true; record the start-up time."""
    deadline = started + START_TIMEOUT_S
    while True:
        if server.proc.poll() is not None:
            raise ServerError(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")
        if ready():
            server.start_s = time.monotonic() - started
            return
        if time.monotonic() > deadline:
            server.stop()
            raise ServerError(
                f"{server.name} did not answer within {START_TIMEOUT_S} s:\n{server.log_tail()}"
            )
        time.sleep(PROBE_INTERVAL_S)


def answers(address: str | tuple[str, int], request: bytes, expect: bytes) -> bool:
    """Whether a server at ``address`` answers ``request`` with bytes containing ``expect``."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(address)
            sock.sendall(request)
            reply = b""
            while expect not in reply and (data := sock.recv(65536)):
                reply += data
            return expect in reply
    except OSError:
        return False  # not listening yet


def read_port(server: Server) -> int:
    """The ``listening PORT`` line a bench server prints on stdout."""
    if server.proc.stdout is None:
        raise RuntimeError(f"{server.name} was started without stdout=PIPE; this is a bug in the bench")
    line = server.proc.stdout.readline().decode()
    if not line.startswith("listening"):
        server.stop()
        raise ServerError(f"{server.name} printed {line!r}, not 'listening PORT':\n{server.log_tail()}")
    return int(line.split()[1])


# --- pymgr ---------------------------------------------------------------------


def _fixed_ports(raw: Any, where: str = "") -> list[str]:
    """Settings in a parsed config that name a fixed TCP port (``port = N``, ``"host:N"``), N != 0."""
    found = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            found += _fixed_ports(value, f"{where}.{key}" if where else key)
    elif isinstance(raw, list):
        for i, value in enumerate(raw):
            found += _fixed_ports(value, f"{where}[{i}]")
    elif where.endswith("port") and isinstance(raw, int) and raw != 0:
        found.append(f"{where} = {raw}")
    elif isinstance(raw, str) and re.fullmatch(r"\[?[\w.:-]*\]?:[1-9]\d*", raw) and "secret" not in where:
        found.append(f"{where} = {raw!r}")
    return found


def prepare_demo(workdir: Path, examples_src: Path = EXAMPLES) -> Path:
    """A copy of ``examples_src`` under ``workdir`` whose demo.toml listens on ephemeral ports only.

    ``../var`` then lands in ``workdir``; ``port = N`` lines and ``"host:N"``
    listener addresses get port 0; ``BENCH_LIMITS`` lifts the rate limit out
    of reach. Anything else stays as the demo has it.

    Raises:
        ServerError: a fixed port is left that this function does not know how to change.
    """
    examples = workdir / "examples"
    shutil.copytree(examples_src, examples, ignore=shutil.ignore_patterns("__pycache__", "var"))
    config = examples / "demo.toml"
    text = FIXED_PORT_LINE.sub(r"\g<1>0\g<2>", config.read_text())
    text = FIXED_ADDRESS_LINE.sub(r"\g<1>0\g<2>", text)
    raw = tomllib.loads(text)
    left = _fixed_ports(raw)
    if left:
        raise ServerError(
            f"examples/demo.toml still has fixed ports after the rewrite: {left}; see bench/servers.py"
        )
    if "limits" in raw:
        raise ServerError(
            "examples/demo.toml has a [limits] section; bench/servers.py must merge BENCH_LIMITS into it"
        )
    config.write_text(text + BENCH_LIMITS)
    return config


def demo_config_summary(config: Path) -> dict[str, Any]:
    """What the demo config turns on (sections, modules, auth, policy, audit), for the report."""
    raw = tomllib.loads(config.read_text())
    return {
        "sections": sorted(raw),
        "modules": raw.get("modules", {}).get("enabled"),
        "log_level": raw.get("log_level"),
        "legacy": bool(raw.get("legacy", {}).get("enabled")),
        "http_tcp": raw.get("http", {}).get("tcp"),
        "auth": raw.get("auth"),
        "policy_rules": len(raw.get("policy", {}).get("rules", [])),
        "audit": raw.get("audit"),
    }


def audit_lines(workdir: Path) -> int:
    """Lines in the audit log files a pymgr under ``workdir`` wrote (0: no audit log found)."""
    return sum(len(p.read_bytes().splitlines()) for p in workdir.rglob("audit*") if p.is_file())


def health_request() -> bytes:
    return b"GET /v1/health HTTP/1.1\r\nHost: pymgr\r\nConnection: close\r\n\r\n"


def _unix_address(ready_line: dict[str, Any]) -> str:
    for address in ready_line["http"]:
        if address.startswith("unix:"):
            return str(address.removeprefix("unix:"))
    raise ServerError(
        f"pymgr listens on no Unix socket: {ready_line['http']}; the demo config should have one"
    )


def start_pymgr(workdir: Path, name: str = "pymgr", source: Path | None = None) -> Server:
    """``pymgr serve`` with the demo config; start_s is to the first answered request.

    ``source``: another checkout of pymgr (its ``src/`` and ``examples/``) to
    run instead of this one, for an A/B of two commits in the same run.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if source is None:
        config = prepare_demo(workdir)
        argv, env = [str(BIN / "pymgr")], None
    else:
        config = prepare_demo(workdir, source / "examples")
        argv = [sys.executable, "-m", "pymgr"]
        env = {**os.environ, "PYTHONPATH": str(source / "src")}
    started = time.monotonic()
    server = spawn_server(name, [*argv, "serve", "--config", str(config)], workdir, env=env)
    server.info["config"] = str(config)
    server.info["demo"] = demo_config_summary(config)
    ready_line: dict[str, Any] = {}

    def ready() -> bool:
        if not ready_line:
            match = re.search(r" ready (\{.*\})$", server.log_path.read_text(errors="replace"), re.M)
            if match is None:
                return False
            ready_line.update(json.loads(match.group(1)), at=time.monotonic() - started)
        return answers(_unix_address(ready_line), health_request(), b'"ok":true')

    wait_ready(server, ready, started)
    server.info["ready_log_s"] = ready_line["at"]
    server.info["unix"] = _unix_address(ready_line)
    if "legacy" in ready_line:
        host, port = ready_line["legacy"].removeprefix("tcp:").rsplit(":", 1)
        server.info["legacy"] = (host, int(port))
        legacy = tomllib.loads(config.read_text())["legacy"]
        server.info["legacy_secret"] = legacy["secret"]
    return server


class Fleet:
    """The servers of one bench run; ``close`` stops all of them."""

    def __init__(self) -> None:
        self.servers: dict[str, Server] = {}

    def add(self, server: Server) -> Server:
        self.servers[server.name] = server
        return server

    def __getitem__(self, name: str) -> Server:
        return self.servers[name]

    def __contains__(self, name: str) -> bool:
        return name in self.servers

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def export_commit(ref: str, dest: Path) -> Path:
    """The tree of commit ``ref`` of this repository, written under ``dest`` (git archive, no work tree)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True, check=False)
    if archive.returncode != 0:
        raise ServerError(f"git archive {ref} failed: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def has_module(name: str) -> bool:
    """Whether a Python package is importable in this venv (gevent, supervisor)."""
    return importlib.util.find_spec(name) is not None


def scan_argv(python: str = sys.executable) -> list[str]:
    """The demo's scan task as one fixed command (what supervisord runs)."""
    return [
        python,
        "scan.py",
        "--task-id",
        "1",
        "--duration",
        "0",
        "--exit-code",
        "0",
        "--fork-child",
        "false",
    ]
