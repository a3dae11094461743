"""Shared fixtures: a real daemon process on temporary sockets.

The daemon runs as a subprocess through the `pymgr` console script, with a
config written into tmp_path: a Unix socket there, the legacy listener on an
ephemeral loopback port, state in tmp_path. It never touches ./var or 6667,
so tests pass while a demo runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings

# make test runs the suite on several workers of a small machine: how long hypothesis takes to make
# an example says nothing of pymgr, so its speed checks are off (failures of the property still fail).
settings.register_profile("pymgr", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pymgr")

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
PYMGR = Path(sys.executable).parent / "pymgr"
LEGACY_SECRET = "test-secret"

BASE_CONFIG = f"""
state_dir = "state"
log_level = "debug"

[http]
unix_socket = "pymgr.sock"
socket_mode = "0666"
# Tests call as other users too (www-data, nobody) from a 0700 tmp_path.
allow_world_writable = true

[legacy]
enabled = true
host = "127.0.0.1"
port = 0
secret = "{LEGACY_SECRET}"
read_timeout_s = 2

# The legacy secret above is the tests' own, public: the config files are 0644.
[security]
public_secrets = true

# Every caller may do everything, as before the policy existed; the policy's
# own tests (tests/auth/) write their own rules.
[[policy.rules]]
name = "tests: everyone, everything"
subjects = ["any", "legacy"]
actions = ["*"]

[modules]
enabled = ["demo", "tasks", "SCAN_MODULE"]

[tasks]
stop_grace_s = 1
# A killed test daemon leaves its keeper behind (by design); let it go soon.
keeper_idle_exit_s = 1

[tasks.types.scan]
argv = ["{{python}}", "{EXAMPLES}/scan.py", "--task-id", "{{task_id}}", "--duration", "{{duration}}",
        "--exit-code", "{{exit_code}}", "--fork-child", "{{fork_child}}"]
cwd = "{EXAMPLES}"

[tasks.types.scan.params]
task_id = {{ type = "int", min = 0 }}
duration = {{ type = "float", default = 30, min = 0 }}
exit_code = {{ type = "int", default = 0, min = 0, max = 255 }}
fork_child = {{ type = "bool", default = false }}

[tasks.types.echo]
argv = ["/bin/echo", "{{word}}"]

[tasks.types.echo.params]
word = {{ type = "str" }}
"""

#: Seconds a daemon gets to print its ready line; generous for a loaded CI box.
READY_TIMEOUT_S = 20.0


@dataclass
class Daemon:
    """A running daemon process and where to reach it."""

    proc: subprocess.Popen[bytes]
    dir: Path
    socket: Path
    legacy_port: int | None
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout_s)


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path) -> dict[str, object]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if " pymgr: ready " in line:
                return json.loads(line.split(" pymgr: ready ", 1)[1])
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{log_path.read_text()}")
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"daemon not ready within {READY_TIMEOUT_S} s:\n{log_path.read_text()}")


def launch_daemon(directory: Path, config_text: str = BASE_CONFIG) -> Daemon:
    """Write a config into ``directory`` and start a daemon on it."""
    return _ready(*_spawn(directory, config_text))


def launch_daemons(specs: list[tuple[Path, str]]) -> list[Daemon]:
    """Start several daemons at once (directory, config text each): all spawned, then each waited for.

    Each daemon spends most of its start importing Python; started one after the other, a test with
    three of them waits three times for that.
    """
    spawned = [_spawn(directory, config_text) for directory, config_text in specs]
    try:
        return [_ready(directory, proc, log_path) for directory, proc, log_path in spawned]
    except BaseException:
        for _, proc, _ in spawned:
            proc.kill()
            proc.wait(timeout=10)
        raise


def _spawn(directory: Path, config_text: str) -> tuple[Path, subprocess.Popen[bytes], Path]:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "pymgr.toml"
    config.write_text(config_text)
    log_path = directory / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(PYMGR), "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return directory, proc, log_path


def _ready(directory: Path, proc: subprocess.Popen[bytes], log_path: Path) -> Daemon:
    ready = _wait_ready(proc, log_path)
    legacy = ready.get("legacy")
    return Daemon(
        proc=proc,
        dir=directory,
        socket=directory / "pymgr.sock",
        legacy_port=int(str(legacy).rsplit(":", 1)[1]) if legacy else None,
        log_path=log_path,
    )


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: start daemons with a given config text; all are stopped after the test."""
    started: list[Daemon] = []

    def start(config_text: str = BASE_CONFIG, name: str = "d", base: Path | None = None) -> Daemon:
        daemon = launch_daemon((base or tmp_path) / name, config_text)
        started.append(daemon)
        return daemon

    yield start
    _kill(started)


@pytest.fixture
def start_daemons(tmp_path: Path) -> Iterator[Callable[..., list[Daemon]]]:
    """Factory: start several daemons at once, (config text, name) each; all are stopped after the test."""
    started: list[Daemon] = []

    def start(*configs: tuple[str, str]) -> list[Daemon]:
        daemons = launch_daemons([(tmp_path / name, config_text) for config_text, name in configs])
        started.extend(daemons)
        return daemons

    yield start
    _kill(started)


def _kill(started: list[Daemon]) -> None:
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(timeout=10)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A temporary directory other users can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pymgr-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    """A daemon with the test config (demo, tasks, SCAN_MODULE, legacy)."""
    return start_daemon()


def unix_http(daemon: Daemon, timeout_s: float = 60) -> httpx.Client:
    """A plain httpx client on the daemon's Unix socket (for replies the typed client would raise on)."""
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://pymgr", timeout=timeout_s
    )


def wait_for(predicate: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """Poll ``predicate`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


AS_WWW_DATA = ["setpriv", "--reuid=33", "--regid=33", "--init-groups"]


def curl_as_www_data(daemon: Daemon, path: str, body: str = "{}") -> tuple[int, dict[str, Any]]:
    """POST ``body`` to ``path`` on the daemon's Unix socket as www-data (uid 33): status and JSON reply."""
    out = subprocess.run(
        [
            *AS_WWW_DATA,
            "curl",
            "-sS",
            "--unix-socket",
            str(daemon.socket),
            "-w",
            "\n%{http_code}",
            "-d",
            body,
            f"http://pymgr{path}",
        ],
        capture_output=True,
        check=True,
        timeout=30,
        cwd="/",
    )
    text, _, status = out.stdout.decode().rpartition("\n")
    return int(status), json.loads(text)
