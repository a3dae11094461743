"""The README's quick tour and the demo config it runs against.

The tour's shell block runs for real, against examples/demo.toml copied into
a temporary directory with ephemeral ports (the demo's 6667 and 6668 may be
taken by a running `make run`). The legacy and signed-TCP lines are left out:
they name those fixed ports, and tests/test_daemon_legacy.py and
tests/test_daemon_security.py run the same examples.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pymgr.auth.hmac_auth import HmacAuth
from pymgr.config import load_config
from pymgr.errors import Forbidden
from tests.auth.test_policy import WWW, call, policy
from tests.conftest import EXAMPLES, PYMGR, READY_TIMEOUT_S, REPO, wait_for
from tests.test_cli import clean_env

README = (REPO / "README.md").read_text()
TOUR = README[README.index("## A quick tour") : README.index("## Writing a module")]
#: The lines that need the demo's fixed ports.
FIXED_PORTS = ("python3 examples/legacy_client.py", "examples/signed_curl.sh")


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_tour_names_no_task_id_it_did_not_get_back() -> None:
    [shell] = _blocks(TOUR, "sh")
    assert not re.search(r"/v1/tasks/\d|tasks (show|stop|logs) \d", shell)
    assert "make run CONFIG=" in README and "var/` persists" in README


# ---------------------------------------------------------------- the demo's policy for a web back end


def _web_back_end_rule() -> dict[str, Any]:
    [rule] = [r for r in load_config(EXAMPLES / "demo.toml").policy.rules if r.name == "web back end"]
    return {"name": rule.name, "subjects": rule.subjects, "actions": rule.actions}


async def test_the_demo_lets_www_data_start_stop_and_read_scans_only() -> None:
    p = policy(_web_back_end_rule())  # tasks 1 is a scan, 2 a backup (tests/auth/test_policy.py)
    assert await call(p, WWW, "tasks", "start", type="scan") == {"started": "scan"}
    assert await call(p, WWW, "tasks", "stop", id=1) == {"stopped": 1}
    assert await call(p, WWW, "tasks", "logs", id=1) == {"logs": 1}
    assert await call(p, WWW, "tasks", "show", id=2) == {"id": 2}
    for action, params in (("start", {"type": "backup"}), ("stop", {"id": 2}), ("logs", {"id": 2})):
        with pytest.raises(Forbidden):
            await call(p, WWW, "tasks", action, **params)


# ---------------------------------------------------------------- the tour, for real


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Path]:
    """The demo config served from ``tmp_path`` as `make run` serves it; the directory to run the tour in."""
    if shutil.which("curl") is None:
        pytest.skip("the tour uses curl (make test installs it: make system-deps)")
    (tmp_path / "examples").mkdir()
    shutil.copy(EXAMPLES / "scan.py", tmp_path / "examples" / "scan.py")
    text = (EXAMPLES / "demo.toml").read_text()
    text = text.replace('tcp = "127.0.0.1:6668"', 'tcp = "127.0.0.1:0"').replace("port = 6667", "port = 0")
    assert ":0" in text and "port = 0" in text
    config = tmp_path / "examples" / "demo.toml"
    config.write_text(text)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "pymgr").symlink_to(PYMGR)
    log = tmp_path / "daemon.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([str(PYMGR), "serve", "--config", str(config)], stderr=sink, cwd=tmp_path)
    try:
        wait_for(lambda: " pymgr: ready " in log.read_text() or proc.poll() is not None, READY_TIMEOUT_S)
        assert proc.poll() is None, log.read_text()
        yield tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_tour_runs_against_the_demo(demo: Path) -> None:
    [shell] = _blocks(TOUR, "sh")
    lines = [line for line in shell.splitlines() if not line.startswith(FIXED_PORTS)]
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=demo, env=clean_env()
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"key":"scan:1"' in out.stdout.replace(" ", "")
    assert re.search(r"(?m)^state\s+stopped$", out.stdout)  # tasks stop $id --wait: the final record
    assert re.search(r"(?m)^progress\s+\d+(\.\d+)?%$|^progress\s+-$", out.stdout)


def test_the_python_example_runs_against_the_demo(demo: Path) -> None:
    [snippet] = _blocks(TOUR, "python")
    out = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60, cwd=demo, env=clean_env()
    )
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.splitlines()[1] in ("queued", "running")


def test_the_demos_read_anything_key_may_not_read_the_audit_log(demo: Path) -> None:
    """``*:read`` (the demo key's "read anything") never grants ``audit.read``; the rule naming it does."""
    ready = (demo / "daemon.log").read_text().split(" pymgr: ready ", 1)[1].splitlines()[0]
    tcp = next(a for a in json.loads(ready)["http"] if a.startswith("tcp:")).removeprefix("tcp:")
    key = HmacAuth("demo", "pymgr-demo-key--public--never-use-it")
    with httpx.Client(base_url=f"http://{tcp}", auth=key, trust_env=False) as client:
        assert client.get("/v1/tasks").status_code == 200  # the key's *:read
        reply = client.get("/v1/audit")
    assert reply.status_code == 403, reply.text
    assert reply.json()["error"]["message"].startswith("the policy allows key:demo no audit.read; ")
    unix = httpx.HTTPTransport(uds=str(demo / "var" / "pymgr.sock"))
    with httpx.Client(transport=unix, base_url="http://pymgr") as client:
        assert client.get("/v1/audit").status_code == 200  # the owner's rule names audit.read
