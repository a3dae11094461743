"""`pymgr daemon ...` as an init script runs it: real subprocesses, a real locked pidfile, LSB exit codes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pymgr.client import Client
from pymgr.service._pidfile import PidFile, PidFileLocked, PidState, probe
from tests.conftest import BASE_CONFIG
from tests.service.helpers import pid_alive, pymgr, wait_for


class Site:
    """A config, a pidfile and a log in a temp dir, and `pymgr daemon` commands on them."""

    def __init__(self, root: Path, config_text: str = BASE_CONFIG) -> None:
        self.root = root
        self.config = root / "pymgr.toml"
        self.config.write_text(config_text)
        self.pidfile = root / "run" / "pymgr.pid"
        self.log = root / "pymgr.log"
        self.socket = root / "pymgr.sock"

    def daemon(self, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return pymgr(
            "daemon",
            command,
            "--config",
            str(self.config),
            "--pidfile",
            str(self.pidfile),
            *(["--log-file", str(self.log)] if command in ("start", "restart") else []),
            *extra,
        )

    def pid(self) -> int:
        return int(self.pidfile.read_text())


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    site = Site(tmp_path)
    yield site
    if site.pidfile.exists() and probe(site.pidfile).state is PidState.RUNNING:
        os.kill(site.pid(), signal.SIGKILL)


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_start_status_reload_restart_stop(site: Site) -> None:
    assert (site.daemon("status").returncode, site.daemon("status").stdout) == (3, "pymgr is not running\n")

    started = site.daemon("start")
    assert started.returncode == 0, started.stderr
    pid = site.pid()
    assert re.match(
        rf"^pymgr started: pid {pid}, serving unix:{re.escape(str(site.socket))}; log {re.escape(str(site.log))}$",
        started.stdout.strip(),
    )
    daemon = psutil.Process(pid)
    assert daemon.ppid() != os.getpid() and os.getsid(pid) != os.getsid(0)  # detached, its own session
    with Client(socket=site.socket) as client:  # `start` returned only once the daemon serves
        assert client.health().pid == pid

    again = site.daemon("start")
    assert (again.returncode, again.stdout.strip()) == (
        0,
        f"pymgr is already running (pid {pid}, pidfile {site.pidfile})",
    )
    status = site.daemon("status")
    assert (status.returncode, status.stdout.strip()) == (
        0,
        f"pymgr is running (pid {pid}, pidfile {site.pidfile})",
    )

    reloaded = site.daemon("reload")
    assert reloaded.returncode == 0 and reloaded.stdout.startswith(f"sent SIGHUP to pymgr (pid {pid})")
    wait_for(lambda: "config reloaded from" in site.log.read_text(), what="reload in the daemon's log")

    restarted = site.daemon("restart")
    assert restarted.returncode == 0, restarted.stderr
    new_pid = site.pid()
    assert new_pid != pid and not pid_alive(pid)
    assert re.match(
        rf"^stopped pymgr \(pid {pid}\): it exited \d+\.\d s after SIGTERM\npymgr started: pid {new_pid}, ",
        restarted.stdout,
    )

    stopped = site.daemon("stop")
    assert stopped.returncode == 0 and stopped.stdout.startswith(f"stopped pymgr (pid {new_pid})")
    assert not site.pidfile.exists() and not site.socket.exists()
    assert site.daemon("status").returncode == 3


def test_a_stale_pidfile_is_reported_cleaned_and_replaced(site: Site) -> None:
    dead = _dead_pid()
    site.pidfile.parent.mkdir()
    site.pidfile.write_text(f"{dead}\n")
    status = site.daemon("status")
    assert status.returncode == 1  # LSB: dead, pidfile exists
    assert (
        status.stdout.strip()
        == f"pymgr is not running, but its pidfile {site.pidfile} remains: pid {dead} is not running"
    )

    stopped = site.daemon("stop")
    assert stopped.returncode == 0
    assert (
        stopped.stdout.strip()
        == f"pymgr is not running; removed its stale pidfile {site.pidfile} (pid {dead} is not running)"
    )
    assert not site.pidfile.exists()

    with subprocess.Popen(["sleep", "30"]) as other:  # the pid now belongs to another program
        site.pidfile.write_text(f"{other.pid}\n")
        assert re.search(
            rf"remains: pid {other.pid} is now another program \(sleep 30\)$",
            site.daemon("status").stdout.strip(),
        )
        started = site.daemon("start")
        other.kill()
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip().endswith(
        f"(replaced a stale pidfile: pid {other.pid} is now another program (sleep 30))"
    )
    assert site.pid() != other.pid
    assert site.daemon("stop").returncode == 0


def test_commands_on_a_daemon_that_is_not_running(site: Site) -> None:
    reloaded = site.daemon("reload")
    assert (reloaded.returncode, reloaded.stderr.strip()) == (
        7,
        f"pymgr is not running (pidfile {site.pidfile}); nothing to reload",
    )
    stopped = site.daemon("stop")
    assert (stopped.returncode, stopped.stdout.strip()) == (
        0,
        f"pymgr is not running (no pidfile {site.pidfile})",
    )


def test_a_bad_config_is_exit_6_and_no_config_is_exit_2(site: Site) -> None:
    site.config.write_text("[http]\nmax_body_bytes = 0\n")
    bad = site.daemon("start")
    assert bad.returncode == 6  # LSB: program is not configured
    assert re.search(r"http\.max_body_bytes: Input should be greater than or equal to 1", bad.stderr)
    missing = pymgr("daemon", "start", "--pidfile", str(site.pidfile))
    assert (missing.returncode, missing.stderr.strip()) == (
        2,
        "error: --config FILE is required to start the daemon",
    )


def test_a_start_up_failure_is_reported_by_start(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert "\nport = 0\n" in BASE_CONFIG
        # the busy port is the legacy listener's
        site = Site(tmp_path, BASE_CONFIG.replace("\nport = 0\n", f"\nport = {port}\n"))
        failed = site.daemon("start", "--timeout", "20")
    assert failed.returncode == 1
    assert re.match(
        rf"^pymgr did not start: cannot listen for the legacy protocol on 127\.0\.0\.1:{port}: .*address already in use",
        failed.stderr,
        re.IGNORECASE,
    )
    assert not site.pidfile.exists()  # removed by the daemon on its way out
    assert site.daemon("status").returncode == 3


def test_stop_waits_then_force_kills(site: Site) -> None:
    assert site.daemon("start").returncode == 0
    pid = site.pid()
    os.kill(pid, signal.SIGSTOP)  # a daemon that does not react to SIGTERM
    try:
        slow = site.daemon("stop", "--timeout", "0.5")
        assert slow.returncode == 1
        assert slow.stderr.strip() == (
            f"pymgr (pid {pid}) is still running 0.5 s after SIGTERM (requests or task stops still finishing?); "
            "wait, or run `pymgr daemon stop --force` to SIGKILL it"
        )
        forced = site.daemon("stop", "--timeout", "0.5", "--force")
        assert (forced.returncode, forced.stdout.strip()) == (
            0,
            f"killed pymgr (pid {pid}) with SIGKILL: it ignored SIGTERM for 0.5 s",
        )
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert not site.pidfile.exists()
    assert site.daemon("status").returncode == 3


# -- the pidfile lock itself ------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from pymgr.service._pidfile import PidFile
with PidFile(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def _hold(tmp_path: Path, pidfile: Path, script_name: str = "pymgr") -> subprocess.Popen[str]:
    """A process that holds ``pidfile`` as the daemon does; its command is pymgr if the script is named so."""
    script = tmp_path / script_name
    script.write_text(HOLD)
    holder = subprocess.Popen([sys.executable, str(script), str(pidfile)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


def test_the_lock_says_running_and_dies_with_its_holder(tmp_path: Path) -> None:
    pidfile = tmp_path / "run" / "x.pid"
    holder = _hold(tmp_path, pidfile)
    try:
        assert probe(pidfile) == probe(pidfile)  # probing disturbs nothing
        assert probe(pidfile).state is PidState.RUNNING and probe(pidfile).pid == holder.pid
        with pytest.raises(
            PidFileLocked,
            match=rf"^pidfile {re.escape(str(pidfile))} is locked by pid {holder.pid}: pymgr is already running$",
        ):
            with PidFile(pidfile):
                pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
    found = probe(pidfile)  # killed: the file stays, the lock is gone
    assert (found.state, found.pid, found.detail) == (
        PidState.STALE,
        holder.pid,
        f"pid {holder.pid} is not running",
    )
    with PidFile(pidfile):  # a new daemon takes a stale pidfile over
        assert int(pidfile.read_text()) == os.getpid()
    assert not pidfile.exists()
