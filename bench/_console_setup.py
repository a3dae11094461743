"""What bench_console.py measures: a daemon and a console, each its own process, and a signed-in person.

Rules:
- Everything lives in the bench's temporary directory: the daemon's state and socket, the console's
  config and users file. The console listens on an ephemeral loopback port.
- The console is the daemon's delegate (``uid:`` of the user it runs as) and the person it signs in
  has the role the policy grants everything: this measures the console, not the policy.
- Run as root, the console is started with ``user = "nobody"`` (it never serves as root); then the
  directory is traversable and the socket's group is nobody's, for this temporary daemon only.
"""

from __future__ import annotations

import asyncio
import grp
import http.client
import json
import os
import pwd
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.unix_http import Conn
from pymgr.console import users

#: Rows per page of the console's tasks table: its default (``[console] page_size``).
PAGE_SIZE = 50
#: One run's events: 20 progress lines 20 ms apart, then its end (no braces: argv's placeholders).
TICKER = (
    "import time\n"
    "for i in range(1, 21):\n"
    "    print('PYMGR_PROGRESS %d tick %d' % (i * 5, i), flush=True)\n"
    "    time.sleep(0.02)\n"
)

DAEMON_CONFIG = """
state_dir = "state"
log_level = "warning"

[http]
unix_socket = "pymgr.sock"
socket_mode = "{socket_mode}"
{socket_group}

[limits]
rate_per_s = 1000000
rate_burst = 1000000

[[policy.delegates]]
subject = "uid:{console_uid}"
namespace = "console"
roles = ["operators"]
own_calls = true

[[policy.rules]]
name = "bench: the bench and the console's own event stream"
subjects = ["any"]
actions = ["*"]

[[policy.rules]]
name = "bench: the console's person"
subjects = ["role:operators"]
actions = ["*"]

[modules]
enabled = ["tasks", "metrics"]

[tasks.types.ticker]
argv = ["{{python}}", "-c", {ticker}]
cwd = "/"
"""

CONSOLE_CONFIG = """
[console]
listen = "127.0.0.1:{port}"
socket = "pymgr.sock"
users_file = "users.json"
{user}
max_event_streams = {max_streams}
stream_queue_size = 4096
page_size = {page_size}
"""


@dataclass
class Stack:
    daemon: subprocess.Popen[bytes]
    console: subprocess.Popen[bytes]
    socket: Path
    port: int
    cookie: str
    page_size: int = PAGE_SIZE


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _spawn(directory: Path, name: str, args: list[str]) -> subprocess.Popen[bytes]:
    with open(directory / f"{name}.log", "wb") as log:  # the process has its own descriptor of it
        return subprocess.Popen(
            [sys.executable, "-m", "pymgr", *args], stdout=log, stderr=subprocess.STDOUT, cwd=directory
        )


def _wait(directory: Path, name: str, process: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{name} did not start:\n{(directory / f'{name}.log').read_text()}")
        time.sleep(0.05)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def start_stack(directory: Path, max_streams: int) -> Stack:
    """The daemon (its history already in ``directory/state``), the console, and a session's cookie."""
    as_root = os.geteuid() == 0
    console_user = pwd.getpwnam("nobody") if as_root else pwd.getpwuid(os.geteuid())
    (directory / "pymgr.toml").write_text(
        DAEMON_CONFIG.format(
            socket_mode="0660" if as_root else "0600",
            socket_group=f'socket_group = "{grp.getgrgid(console_user.pw_gid).gr_name}"' if as_root else "",
            console_uid=console_user.pw_uid,
            ticker=json.dumps(TICKER),
        )
    )
    port = _free_port()
    (directory / "console.toml").write_text(
        CONSOLE_CONFIG.format(
            port=port,
            user='user = "nobody"' if as_root else "",
            max_streams=max_streams + 10,
            page_size=PAGE_SIZE,
        )
    )
    password = secrets.token_urlsafe(12)
    users.add(directory / "users.json", "bench", password, ["operators"])
    if as_root:
        directory.chmod(0o755)
        os.chown(directory / "users.json", console_user.pw_uid, console_user.pw_gid)
    daemon = _spawn(directory, "daemon", ["serve", "--config", "pymgr.toml"])
    _wait(directory, "daemon", daemon, (directory / "pymgr.sock").exists)
    console = _spawn(directory, "console", ["console", "--config", "console.toml"])
    _wait(directory, "console", console, lambda: _listening(port))
    stack = Stack(daemon, console, directory / "pymgr.sock", port, _login(port, "bench", password))
    asyncio.run(_subscribed(stack.socket))
    return stack


async def _subscribed(path: Path) -> None:
    """Wait until the console's hub holds its one event stream to the daemon."""
    conn = await Conn.open(str(path))
    deadline = time.monotonic() + 30
    while b"\npymgr_event_subscribers 1.0" not in (await conn.request("GET", "/metrics"))[1]:
        if time.monotonic() > deadline:
            raise SystemExit("the console did not subscribe to the daemon's events within 30 s")
        await asyncio.sleep(0.1)
    conn.close()


def _login(port: int, name: str, password: str) -> str:
    """Sign in as a browser does (the login form's token, same-origin POST); the session cookie."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/login")
    page = conn.getresponse()
    form_cookie = page.headers["set-cookie"].split(";", 1)[0]
    token = re.search(r'name="login_csrf" value="([^"]+)"', page.read().decode())
    assert token is not None, "no login_csrf in the login page"
    body = urllib.parse.urlencode({"login_csrf": token.group(1), "name": name, "password": password})
    headers = {
        "cookie": form_cookie,
        "origin": f"http://127.0.0.1:{port}",
        "content-type": "application/x-www-form-urlencoded",
    }
    conn.request("POST", "/login", body, headers)
    reply = conn.getresponse()
    reply.read()
    cookies = [c.split(";", 1)[0] for c in reply.headers.get_all("set-cookie") or []]
    session = next((c for c in cookies if c.startswith("pymgr_console=")), None)
    if reply.status != 303 or session is None:
        raise SystemExit(f"login failed: {reply.status} {cookies}")
    conn.close()
    return session


def stop_stack(stack: Stack) -> None:
    for process in (stack.console, stack.daemon):
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
