"""The real daemon over its real Unix socket: curl, httpx, signals, shutdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BASE_CONFIG, PYMGR, Daemon, unix_http, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None, reason="curl is not installed (make test installs it)"
)


def curl(daemon: Daemon, path: str, *args: str) -> tuple[int, Any]:
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--unix-socket",
            str(daemon.socket),
            "-w",
            "\n%{http_code}",
            *args,
            f"http://pymgr{path}",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


def raw_request(daemon: Daemon, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(daemon.socket))
        sock.sendall(data)
        reply = b""
        while not reply.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply


def test_health_modules_and_echo_through_curl(daemon: Daemon) -> None:
    status, body = curl(daemon, "/v1/health")
    assert status == 200 and body["ok"] and body["result"]["status"] == "ok"
    assert body["result"]["pid"] == daemon.proc.pid
    status, body = curl(daemon, "/v1/modules")
    names = {m["name"] for m in body["result"]}
    assert names == {"audit", "demo", "tasks", "SCAN_MODULE"}  # audit: every daemon serves it
    status, body = curl(daemon, "/v1/modules/demo/echo", "-d", '{"greeting": "hi", "n": [1, 2]}')
    assert (status, body) == (200, {"ok": True, "result": {"greeting": "hi", "n": [1, 2]}})


def test_whoami_sees_the_peer_credentials(daemon: Daemon) -> None:
    status, body = curl(daemon, "/v1/modules/demo/whoami", "-X", "POST")
    me = body["result"]
    assert me["transport"] == "unix" and me["uid"] == os.getuid() and me["gid"] == os.getgid()
    assert me["pid"] > 0 and me["user"]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to call as www-data (uid 33)",
)
def test_whoami_as_another_user(start_daemon: Callable[..., Daemon], open_dir: Path) -> None:
    daemon = start_daemon(base=open_dir)
    out = subprocess.run(
        [
            "setpriv",
            "--reuid=33",
            "--regid=33",
            "--init-groups",
            "curl",
            "-sS",
            "--unix-socket",
            str(daemon.socket),
            "-X",
            "POST",
            "http://pymgr/v1/modules/demo/whoami",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    )
    me = json.loads(out.stdout)["result"]
    assert (me["uid"], me["gid"], me["user"]) == (33, 33, "www-data")
    assert "www-data" in me["groups"]


def test_errors_over_the_socket(daemon: Daemon) -> None:
    status, body = curl(daemon, "/v1/modules/nope/x", "-d", "{}")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = curl(daemon, "/v1/modules/demo/sleep", "-d", '{"seconds": "soon"}')
    assert status == 400 and body["error"]["code"] == "bad_params"
    assert body["error"]["message"].startswith(
        "bad params for demo.sleep: seconds: Input should be a valid number"
    )
    status, body = curl(daemon, "/v1/modules/demo/echo", "-d", "not json")
    assert status == 400 and body["error"]["message"].startswith("request body is not valid JSON")
    reply = raw_request(
        daemon, b"POST /v1/modules/demo/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 413 ") and b'"code":"too_large"' in reply
    # ...and the daemon goes on serving.
    assert curl(daemon, "/v1/health")[0] == 200


def test_socket_mode_from_config(daemon: Daemon) -> None:
    assert oct(daemon.socket.stat().st_mode & 0o777) == oct(0o666)


def test_task_lifecycle_over_http(daemon: Daemon) -> None:
    with unix_http(daemon) as c:
        r = c.post(
            "/v1/tasks", json={"type": "scan", "params": {"task_id": 5, "duration": 30}, "key": "scan:5"}
        )
        assert r.status_code == 202
        task = r.json()["result"]
        assert task["state"] in ("queued", "running") and task["key"] == "scan:5"
        again = c.post("/v1/tasks", json={"type": "scan", "params": {"task_id": 5}, "key": "scan:5"}).json()[
            "result"
        ]
        assert again["id"] == task["id"]
        wait_for(lambda: c.get(f"/v1/tasks/{task['id']}").json()["result"]["state"] == "running")
        listed = c.get("/v1/tasks", params={"state": "running", "type": "scan"}).json()["result"]
        assert [t["id"] for t in listed] == [task["id"]]
        assert c.post(f"/v1/tasks/{task['id']}/stop").status_code == 202
        done = wait_for(
            lambda: (t := c.get(f"/v1/tasks/{task['id']}").json()["result"])["state"] == "stopped" and t
        )
        assert done["signal"] == "SIGTERM" and done["ended_at"]
        assert c.get("/v1/tasks/999999").status_code == 404
        assert c.post("/v1/tasks", json={"type": "nope"}).json()["error"]["code"] == "not_found"


def test_no_shell_anywhere(daemon: Daemon, tmp_path: Path) -> None:
    victim = tmp_path / "x"
    word = f"1; touch {victim}"
    with unix_http(daemon) as c:
        task = c.post("/v1/tasks", json={"type": "echo", "params": {"word": word}}).json()["result"]
        done = wait_for(
            lambda: (t := c.get(f"/v1/tasks/{task['id']}").json()["result"])["state"] == "succeeded" and t
        )
    assert done["argv"] == ["/bin/echo", word]  # one literal argument
    assert not victim.exists()


def test_sigterm_finishes_in_flight_requests_and_removes_socket(daemon: Daemon) -> None:
    replies: list[Any] = []

    def slow_call() -> None:
        with unix_http(daemon) as c:
            replies.append(c.post("/v1/modules/demo/sleep", json={"seconds": 1.0}).json())

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.3)  # the request is in flight
    daemon.proc.send_signal(signal.SIGTERM)
    caller.join(timeout=20)
    assert replies == [{"ok": True, "result": {"slept_s": 1.0}}]
    assert daemon.proc.wait(timeout=20) == 0
    assert not daemon.socket.exists()
    assert "stopped" in daemon.log()


def test_sigint_exits_zero(daemon: Daemon) -> None:
    assert daemon.stop(signal.SIGINT) == 0
    assert not daemon.socket.exists()


def test_bad_config_exits_with_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[http]\nsocket_mode = "rw"\n')
    proc = subprocess.run(
        [str(PYMGR), "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 78
    assert "http.socket_mode: Value error, must be an octal mode" in proc.stderr


def test_duplicate_module_stops_startup(tmp_path: Path) -> None:
    (tmp_path / "dupmod.py").write_text(
        "from pymgr import Module\n\nclass Other(Module):\n    name = 'demo'\n"
    )
    config = tmp_path / "dup.toml"
    config.write_text(
        BASE_CONFIG.replace(
            'enabled = ["demo", "tasks", "SCAN_MODULE"]', 'enabled = ["demo", "dupmod:Other"]'
        )
    )
    proc = subprocess.run(
        [str(PYMGR), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 78, proc.stderr
    assert (
        "cannot start: duplicate module name 'demo': dupmod.Other and pymgr.modules.demo.Demo" in proc.stderr
    )


def test_second_daemon_on_same_socket_refuses(daemon: Daemon, tmp_path: Path) -> None:
    text = BASE_CONFIG.replace('unix_socket = "pymgr.sock"', f'unix_socket = "{daemon.socket}"')
    config = tmp_path / "second.toml"
    config.write_text(text)
    proc = subprocess.run(
        [str(PYMGR), "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 78
    assert f"another daemon is already listening on {daemon.socket}" in proc.stderr
    assert curl(daemon, "/v1/health")[0] == 200
