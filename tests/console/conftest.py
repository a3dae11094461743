"""A real daemon and a real console (uvicorn on an ephemeral port, in a thread of the test process,
so that a test can move the console's clock), driven over HTTP.

The daemon's policy makes the test process the console's delegate (namespace ``console``): alice is
an operator and an auditor (starts and stops scans, calls demo actions, reads the audit log), bob a viewer (reads tasks, calls whoami).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from pymgr.console import users
from pymgr.console.app import create_app
from pymgr.console.config import ConsoleConfig
from pymgr.console.listener import UnixListener, bind_unix
from starlette.applications import Starlette
from tests.conftest import BASE_CONFIG, Daemon

ME = f"uid:{os.getuid()}"
PASSWORDS = {"alice": "alice-password-1", "bob": "bob-password-12"}

DAEMON_CONFIG = (
    BASE_CONFIG
    + f"""
[[policy.delegates]]
subject = "{ME}"
namespace = "console"
roles = ["operators", "viewers", "auditors"]
own_calls = true

[[policy.rules]]
name = "the console itself: the shared event stream"
subjects = ["{ME}"]
actions = ["tasks.read"]

[[policy.rules]]
name = "operators"
subjects = ["role:operators"]
actions = ["demo.*", "tasks.read", "tasks.start:scan", "tasks.stop:scan", "tasks.logs:scan"]

[[policy.rules]]
name = "auditors"
subjects = ["role:auditors"]
actions = ["audit.read"]

[[policy.rules]]
name = "viewers"
subjects = ["role:viewers"]
actions = ["tasks.read", "demo.whoami"]
"""
)


class Clock:
    """The console's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Console:
    url: str
    app: Starlette
    clock: Clock
    daemon: Daemon
    dir: Path
    server: uvicorn.Server
    #: The console's event loop (in its own thread): its state is touched only from there.
    loop: asyncio.AbstractEventLoop
    #: With ``listen = "unix:PATH"``: that socket, served beside the TCP port of ``url``.
    unix: UnixListener | None = None

    def in_loop(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` in the console's event loop, and wait for it."""

        async def call() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=10)

    def drop_connections(self) -> None:
        """Close every open connection of the console, as a network failure would (its streams too)."""
        for connection in list(self.server.server_state.connections):
            connection.loop.call_soon_threadsafe(connection.transport.close)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, follow_redirects=False)

    def http_unix(self) -> httpx.Client:
        """A client of the console's Unix socket (as the reverse proxy is)."""
        assert self.unix is not None
        transport = httpx.HTTPTransport(uds=str(self.unix.path))
        return httpx.Client(transport=transport, base_url="http://127.0.0.1", timeout=30)

    def audit(self) -> list[dict[str, Any]]:
        """The daemon's audit lines (its one file: the tests write few)."""
        path = self.daemon.dir / "state" / "audit.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def login(self, name: str, password: str | None = None) -> httpx.Client:
        http = self.http()
        reply = submit_login(http, name, PASSWORDS[name] if password is None else password)
        assert reply.status_code == 303, reply.text
        return http


def form_token(page: str, name: str = "csrf") -> str:
    match = re.search(rf'name="{name}" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def submit_login(http: httpx.Client, name: str, password: str) -> httpx.Response:
    page = http.get("/login")
    return http.post(
        "/login", data={"login_csrf": form_token(page.text, "login_csrf"), "name": name, "password": password}
    )


def _serve(
    app: Starlette, also: list[socket.socket]
) -> tuple[str, uvicorn.Server, threading.Thread, asyncio.AbstractEventLoop]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", proxy_headers=False))
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve(sockets=[sock, *also])

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the console did not start"
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread, loops[0]


@pytest.fixture
def start_console(start_daemon: Callable[..., Daemon], tmp_path: Path) -> Iterator[Callable[..., Console]]:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(daemon_tasks: str = "", **settings: object) -> Console:
        """A console with ``settings``, before a daemon with ``daemon_tasks`` added to its ``[tasks]``."""
        assert DAEMON_CONFIG.count("[tasks]\n") == 1
        daemon = start_daemon(DAEMON_CONFIG.replace("[tasks]\n", f"[tasks]\n{daemon_tasks}"))
        users_file = tmp_path / "users.json"
        users.add(users_file, "alice", PASSWORDS["alice"], ["operators", "auditors"])
        users.add(users_file, "bob", PASSWORDS["bob"], ["viewers"])
        config = ConsoleConfig.model_validate(
            {"socket": daemon.socket, "users_file": users_file, "login_delay_s": 5.0, **settings}
        )
        clock = Clock()
        app = create_app(config, clock)
        path = config.listen_path()
        unix = None if path is None else bind_unix(path, config.listen_mode)
        if unix is not None:
            listeners.append(unix)
        url, server, thread, loop = _serve(app, [] if unix is None else [unix.sock])
        servers.append((server, thread))
        return Console(url, app, clock, daemon, tmp_path, server, loop, unix)

    listeners: list[UnixListener] = []
    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)
    for listener in listeners:
        listener.close()


@pytest.fixture
def console(start_console: Callable[..., Console]) -> Console:
    return start_console()
