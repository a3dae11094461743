"""The peers pymgr is measured against: supervisord, the seed (2014) design, and the two floors.

Started the way ``servers.start_pymgr`` starts pymgr: in the foreground, each in its own
work directory, ready once it answers.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.servers import BENCH, BIN, Server, answers, read_port, spawn_server, wait_ready


# --- supervisord -----------------------------------------------------------------

SUPERVISORD_CONF = """\
[unix_http_server]
file = {workdir}/supervisor.sock
chmod = 0700

[supervisord]
nodaemon = true
logfile = {workdir}/supervisord-main.log
pidfile = {workdir}/supervisord.pid
childlogdir = {workdir}
loglevel = info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:scan]
command = {command}
directory = {directory}
autostart = false
autorestart = false
startsecs = 0
"""


def xmlrpc_request(method: str, *string_params: str, close: bool = False) -> bytes:
    """An XML-RPC call as raw HTTP/1.1 bytes (supervisord's /RPC2)."""
    params = "".join(f"<param><value><string>{p}</string></value></param>" for p in string_params)
    body = (
        f'<?xml version="1.0"?><methodCall><methodName>{method}</methodName><params>{params}</params></methodCall>'
    ).encode()
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
        + connection
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def start_supervisord(
    workdir: Path, task_argv: list[str], task_cwd: Path, name: str = "supervisord"
) -> Server:
    """supervisord in the foreground, one program (the demo's scan task, startsecs=0)."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "supervisord.conf"
    command = " ".join(task_argv)
    conf.write_text(SUPERVISORD_CONF.format(workdir=workdir, command=command, directory=task_cwd))
    started = time.monotonic()
    server = spawn_server(name, [str(BIN / "supervisord"), "-n", "-c", str(conf)], workdir)
    sock = str(workdir / "supervisor.sock")
    wait_ready(
        server, lambda: answers(sock, xmlrpc_request("supervisor.getState", close=True), b"RUNNING"), started
    )
    server.info["unix"] = sock
    return server


# --- the seed design and the floors -----------------------------------------------


def start_seed(workdir: Path, secret: str) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(BENCH / "seed_server.py"), "--port", "0", "--secret", secret]
    started = time.monotonic()
    server = spawn_server("seed", argv, workdir, stdout=subprocess.PIPE)
    port = read_port(server)
    server.start_s = time.monotonic() - started
    server.info["tcp"] = ("127.0.0.1", port)
    return server


def start_floor_asgi(workdir: Path) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    uds = str(workdir / "floor-asgi.sock")
    started = time.monotonic()
    server = spawn_server("floor-asgi", [sys.executable, str(BENCH / "floor_asgi.py"), "--uds", uds], workdir)
    probe = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    wait_ready(server, lambda: answers(uds, probe, b'"ok":true'), started)
    server.info["unix"] = uds
    return server


def start_floor_line(workdir: Path) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    uds = str(workdir / "floor-line.sock")
    argv = [sys.executable, str(BENCH / "floor_line.py"), "--uds", uds, "--port", "0"]
    started = time.monotonic()
    server = spawn_server("floor-line", argv, workdir, stdout=subprocess.PIPE)
    port = read_port(server)
    server.start_s = time.monotonic() - started
    server.info["unix"] = uds
    server.info["tcp"] = ("127.0.0.1", port)
    return server
