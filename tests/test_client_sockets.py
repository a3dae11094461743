"""Both clients close the socket of every connect that fails, without the garbage collector
(client/network.py): a web app retrying a stopped daemon must not pile up descriptors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import AS_WWW_DATA, REPO, Daemon

#: Failed connects a check makes: far more than any descriptor a client keeps on purpose.
ATTEMPTS = 200


def failed_connects(socket: Path, kind: str, as_www_data: bool = False) -> dict[str, object]:
    """What ``tests/clientfds.py`` says after ``ATTEMPTS`` failed connects of client ``kind``."""
    command = [sys.executable, "-m", "tests.clientfds", str(socket), kind, str(ATTEMPTS)]
    if as_www_data:
        command = [*AS_WWW_DATA, *command]
    out = subprocess.run(command, capture_output=True, check=True, timeout=120, cwd=REPO)
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_killed_daemon_leaves_its_socket_file_and_no_descriptor(daemon: Daemon, kind: str) -> None:
    daemon.stop(signal.SIGKILL)
    assert daemon.socket.exists()
    result = failed_connects(daemon.socket, kind)
    assert result["messages"] == [
        f"cannot reach pymgr at socket {daemon.socket}: connection refused (nothing is listening); "
        "is the daemon running? Start it with `pymgr serve --config FILE`"
    ]
    assert result["leaked"] == 0


def test_a_stopped_daemon_leaves_no_socket_file_and_no_descriptor(daemon: Daemon, kind: str) -> None:
    assert daemon.stop() == 0
    assert not daemon.socket.exists()
    result = failed_connects(daemon.socket, kind)
    [message] = result["messages"]  # type: ignore[misc]
    assert message.startswith(f"cannot reach pymgr: no socket at {daemon.socket}; ")
    assert result["leaked"] == 0


def test_a_refused_permission_leaves_no_descriptor(
    start_daemon: Callable[..., Daemon], open_dir: Path, kind: str
) -> None:
    """As root, the check runs as www-data; as anyone else, the socket's mode refuses its owner."""
    daemon = start_daemon(base=open_dir)
    as_root = os.geteuid() == 0
    daemon.socket.chmod(0o660 if as_root else 0)
    result = failed_connects(daemon.socket, kind, as_www_data=as_root)
    [message] = result["messages"]  # type: ignore[misc]
    assert message.startswith(f"cannot reach pymgr at socket {daemon.socket}: permission denied; ")
    assert result["leaked"] == 0
