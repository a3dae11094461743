"""examples/client_typed.py runs against a real daemon (``make test`` also type-checks it under --strict)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import EXAMPLES, Daemon


def test_the_typed_example_runs(daemon: Daemon) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "client_typed.py"), str(daemon.socket)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (out.returncode, out.stderr) == (0, "")
    assert "demo.echo" in out.stdout.split("you may call: ", 1)[1].split("\n", 1)[0]
    assert (
        "PYMGR_PROGRESS" not in out.stdout and "scan 1: 100%" in out.stdout
    )  # the log, without progress lines
    assert re.search(r"(?m)^task 1 succeeded 100%$", out.stdout)  # the end, from the events
    assert re.search(r"(?m)^task 1 ended succeeded at .*\+00:00; the async client agrees: True$", out.stdout)
