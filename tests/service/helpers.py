"""Helpers of the service tests: run the real `pymgr` command, wait for things."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import PYMGR

#: Seconds a daemon gets to come up or go down; generous for a loaded CI box.
WAIT_S = 20.0


def pymgr(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``pymgr ARGS`` to completion, capturing its output."""
    return subprocess.run(
        [str(PYMGR), *args], capture_output=True, text=True, timeout=timeout_s, env=env, check=False
    )


def wait_for(predicate: Callable[[], object], timeout_s: float = WAIT_S, what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout_s} s")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
