"""``examples/fleet/run.sh``: a Redis and three hosts in the foreground, used as docs/fleet.md says, and Ctrl-C.

The Python snippet of docs/fleet.md is run as the page shows it, against that fleet.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import subprocess
from pathlib import Path

import psutil

from pymgr.fleet.client import FleetClient
from tests.conftest import EXAMPLES, PYMGR, REPO, wait_for
from tests.fleet.test_fleet_cli import pymgr

RUN_SH = EXAMPLES / "fleet" / "run.sh"
FLEET_DOC = REPO / "docs" / "fleet.md"


def _python_snippet() -> str:
    """The page's Python code: the one ``python`` block after "From Python:"."""
    text = FLEET_DOC.read_text()
    [code] = re.findall(r"From Python:\n\n```python\n(.*?)```", text, flags=re.DOTALL)
    return code


def _left(directory: Path) -> list[psutil.Process]:
    """The processes still running for the fleet in ``directory`` (Redis, hosts, their keepers)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if str(directory) in cmdline and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def _default_sigint() -> None:
    """SIGINT as a terminal's shell leaves it: a test run started in the background (``make test &``, some
    CI runners) has it ignored, and a shell cannot trap a signal ignored when it started, so run.sh's
    Ctrl-C trap would never run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_run_sh_starts_a_fleet_that_takes_jobs_and_ctrl_c_stops_all_of_it(tmp_path: Path) -> None:
    directory = tmp_path / "fleet"
    (directory / "host2" / "state").mkdir(parents=True)  # as a last run left it
    (directory / "host2" / "state" / "tasks.db").write_text("the last run's")
    log = (tmp_path / "run.log").open("wb")
    env = {**os.environ, "PYMGR_FLEET_DIR": str(directory), "PYMGR": str(PYMGR)}
    script = subprocess.Popen(
        [str(RUN_SH)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=_default_sigint,
    )
    try:
        wait_for(lambda: "Ctrl-C here stops" in (tmp_path / "run.log").read_text(), timeout_s=30)
        text = (tmp_path / "run.log").read_text()
        url = f"unix://{directory}/redis.sock"
        assert f"export PYMGR_FLEET_REDIS={url} PYMGR_FLEET_KEY_ID=console" in text
        assert f"starting clean: removing {directory}/host2 " in text
        assert not (directory / "host2" / "state" / "tasks.db").exists()
        assert f"{PYMGR} fleet submit scan task_id:=2 duration:=60 --host host2 --key long-scan\n" in text
        with FleetClient(url) as fleet:
            wait_for(lambda: sum(host.alive for host in fleet.hosts()) == 3, timeout_s=60)
            tags = {host.id: host.tags for host in fleet.hosts()}
        assert tags == {"host1": ("scanner", "eu"), "host2": ("scanner",), "host3": ()}
        submitter = {
            **os.environ,
            "PYMGR_FLEET_REDIS": url,
            "PYMGR_FLEET_KEY_ID": "console",
            "PYMGR_FLEET_SIGNING_KEY": str(directory / "console.key"),
        }
        out = pymgr(
            "fleet",
            "submit",
            "scan",
            "task_id:=1",
            "duration:=0.5",
            "--tag",
            "scanner",
            "--wait",
            env=submitter,
        )
        assert out.returncode == 0 and ": succeeded by host" in out.stdout, out.stdout + out.stderr
        out = pymgr(
            "fleet",
            "submit",
            "demo.echo",
            "greeting=hi",
            "--action",
            "--host",
            "host3",
            "--wait",
            env=submitter,
        )
        assert out.returncode == 0 and "succeeded by host3" in out.stdout, out.stdout + out.stderr
        snippet = subprocess.run(
            [sys.executable, "-c", _python_snippet()],
            capture_output=True,
            text=True,
            timeout=120,
            env=submitter,
        )
        assert snippet.returncode == 0, snippet.stderr
        assert re.match(r"host[12]\nscan 3: 0%\n", snippet.stdout) and "\nsucceeded 0\n" in snippet.stdout
        assert "StopResult(job_id=" in snippet.stdout and "HostInfo(id='host3'" in snippet.stdout
        assert len(_left(directory)) >= 4  # Redis and three hosts (and their keepers)
        script.send_signal(signal.SIGINT)  # Ctrl-C
        assert script.wait(timeout=60) == 130
        wait_for(lambda: not _left(directory), timeout_s=30)
        text = (tmp_path / "run.log").read_text()
        # The hosts stopped, and were waited for, before Redis was told to.
        assert text.count("INFO pymgr: stopped") == 3
        assert text.rindex("INFO pymgr: stopped") < text.index("User requested shutdown")
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
        for proc in _left(directory):
            proc.kill()
        log.close()
