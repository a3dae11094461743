"""The old design's client against the real daemon's legacy listener."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable

import httpx
import psutil
import pytest

from examples.legacy_client import call, exchange, sign
from pymgr.config import LegacyConfig
from pymgr.transport.legacy import bind_legacy
from tests.conftest import BASE_CONFIG, EXAMPLES, LEGACY_SECRET, Daemon
from tests.test_daemon_http import wait_for


def legacy(daemon: Daemon, module: str, action: str, **params: object) -> dict[str, object]:
    assert daemon.legacy_port is not None
    return call("127.0.0.1", daemon.legacy_port, LEGACY_SECRET, module, action, params)  # type: ignore[no-any-return]


def scan_tasks(daemon: Daemon) -> list[dict[str, object]]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://pymgr") as c:
        return c.get("/v1/tasks", params={"type": "scan"}).json()["result"]  # type: ignore[no-any-return]


def test_scan_start_and_stop_like_the_old_client(daemon: Daemon) -> None:
    assert legacy(daemon, "SCAN_MODULE", "start", task_ids="1,2") == {"success": True, "msg": "start ok"}
    tasks = wait_for(lambda: (t := scan_tasks(daemon)) and all(x["state"] == "running" for x in t) and t)
    assert sorted(t["key"] for t in tasks) == ["scan:1", "scan:2"]
    # Running ids are skipped, not started twice.
    assert legacy(daemon, "SCAN_MODULE", "start", task_ids="2,3") == {"success": True, "msg": "start ok"}
    wait_for(lambda: len(scan_tasks(daemon)) == 3)
    assert legacy(daemon, "SCAN_MODULE", "stop", task_ids="1,2,3") == {"success": True, "msg": "stop ok"}
    done = wait_for(lambda: (t := scan_tasks(daemon)) and all(x["state"] == "stopped" for x in t) and t)
    # A run the stop found still queued never had a process, so no signal.
    assert {t["signal"] for t in done if t["pid"] is not None} <= {"SIGTERM", "SIGKILL"}


def test_the_same_action_behaves_the_same_on_both_transports(daemon: Daemon) -> None:
    reply = legacy(daemon, "demo", "echo", greeting="hi")
    assert reply == {"success": True, "msg": {"greeting": "hi"}}
    whoami = legacy(daemon, "demo", "whoami")
    assert whoami["msg"]["transport"] == "legacy"  # type: ignore[index]


@pytest.mark.parametrize(
    ("module", "action", "params", "code"),
    [
        ("nope", "start", {}, 1),
        ("SCAN_MODULE", "nope", {}, 1),
        ("SCAN_MODULE", "start", {"task_ids": "1,x"}, 4),
        ("SCAN_MODULE", "start", {}, 4),
    ],
)
def test_coded_errors(daemon: Daemon, module: str, action: str, params: dict[str, str], code: int) -> None:
    reply = legacy(daemon, module, action, **params)
    assert reply["success"] is False and reply["msg"]["err_code"] == code  # type: ignore[index]


def test_bad_signature_and_malformed_requests_then_still_serving(daemon: Daemon) -> None:
    assert daemon.legacy_port is not None
    port = daemon.legacy_port
    bad_sig = exchange("127.0.0.1", port, b"module:SCAN_MODULE\naction:start\nsignature:00\ntask_ids:1\n\n")
    assert b'"err_code": 3' in bad_sig
    garbage = exchange("127.0.0.1", port, b"\x00\xff no colon here\n\n")
    assert garbage.startswith(b'{"success": false, "msg": {"err_code": 9')
    no_action = exchange(
        "127.0.0.1", port, f"module:demo\nsignature:{sign(LEGACY_SECRET, 'demo')}\n\n".encode()
    )
    assert b'"err_code": 3' in no_action
    assert legacy(daemon, "demo", "echo") == {"success": True, "msg": {}}


def _escaped_processes(task_id: int, leader: int) -> list[psutil.Process]:
    """Processes of this run that left the leader's session (setsid).

    Matched by the run's marker, read from the leader: the task id alone also matches another
    daemon's run of the same id (another suite on the machine, a run left by an earlier test).
    """
    marker = psutil.Process(leader).environ().get("PYMGR_TASK_MARKER")
    found = []
    for proc in psutil.process_iter(["environ"]):
        env = proc.info.get("environ") or {}
        if (
            env.get("PYMGR_TASK_ID") == str(task_id)
            and env.get("PYMGR_TASK_MARKER") == marker
            and proc.pid != leader
            and os.getsid(proc.pid) != leader
        ):
            found.append(proc)
    return found


def test_stop_kills_a_grandchild_that_called_setsid(daemon: Daemon) -> None:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://pymgr") as c:
        task = c.post(
            "/v1/tasks", json={"type": "scan", "params": {"task_id": 9, "fork_child": True}}
        ).json()["result"]
        running = wait_for(lambda: (t := c.get(f"/v1/tasks/{task['id']}").json()["result"])["pid"] and t)
        escaped = wait_for(lambda: _escaped_processes(task["id"], running["pid"]))
        c.post(f"/v1/tasks/{task['id']}/stop")
        wait_for(lambda: c.get(f"/v1/tasks/{task['id']}").json()["result"]["state"] == "stopped")
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in escaped))


def test_example_client_script_runs(daemon: Daemon) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "legacy_client.py"),
            "--port",
            str(daemon.legacy_port),
            "--secret",
            LEGACY_SECRET,
            "demo",
            "echo",
            "a=1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and out.stdout.strip() == '{"success": true, "msg": {"a": "1"}}'


def test_published_secret_gets_a_loud_warning(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(BASE_CONFIG.replace(f'secret = "{LEGACY_SECRET}"', 'secret = "YI-LUO-KEHAN"'))
    assert "LEGACY SECRET IS PUBLIC" in daemon.log()
    assert call("127.0.0.1", daemon.legacy_port, "YI-LUO-KEHAN", "demo", "echo") == {
        "success": True,
        "msg": {},
    }


# --- the legacy listener bound by the daemon (no libuv thread pool, no idna codec) ---


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_an_ip_host_is_bound_like_create_server(host: str) -> None:
    sock = bind_legacy(LegacyConfig(enabled=True, host=host, port=0, secret="s"))
    try:
        assert sock is not None
        assert sock.getsockname()[0] == host
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        if sock.family == socket.AF_INET6:
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        if sock is not None:
            sock.close()


def test_a_host_name_or_a_busy_port_goes_the_old_way() -> None:
    assert bind_legacy(LegacyConfig(enabled=True, host="localhost", port=0, secret="s")) is None
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert bind_legacy(LegacyConfig(enabled=True, host="127.0.0.1", port=port, secret="s")) is None


def test_a_host_name_still_serves(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(BASE_CONFIG.replace('host = "127.0.0.1"', 'host = "localhost"', 1))
    assert daemon.legacy_port is not None
    assert call("localhost", daemon.legacy_port, LEGACY_SECRET, "demo", "echo") == {
        "success": True,
        "msg": {},
    }
