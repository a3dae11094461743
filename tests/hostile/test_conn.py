"""Hostile clients against connections, sources and keys: replays through real sockets and processes.

- A user with no rights (``nobody``) fills the TCP and legacy listeners from
  several loopback addresses; root and www-data must still be answered on
  the Unix socket.
- The daemon runs short of descriptors (its RLIMIT_NOFILE lowered under it):
  accept errors are logged at a bounded rate, and the listener survives.
- One signing key floods the nonce cache; another key keeps working.
- A user removed from a group loses what the group allowed, after SIGHUP
  and after the configured age.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pymgr.auth.signing import signed_headers
from tests.conftest import AS_WWW_DATA, BASE_CONFIG, PYMGR, READY_TIMEOUT_S, Daemon

ROOT_TOOLS = os.geteuid() == 0 and all(shutil.which(t) for t in ("setpriv", "curl", "prlimit"))
#: Root-only: calls as nobody and www-data, lowers a process's RLIMIT_NOFILE, edits users and groups.
_SKIP_UNLESS_ROOT = pytest.mark.skipif(
    not ROOT_TOOLS, reason="needs root, setpriv, curl and prlimit (acts as other users)"
)


def needs_root(test: Callable[..., None]) -> Callable[..., None]:
    return pytest.mark.root(_SKIP_UNLESS_ROOT(test))


AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
KEY_A, KEY_B = "flooder", "victim"
SECRET_A, SECRET_B = "flooder-secret-0123456789", "victim-secret-0123456789"

#: Opens connections from several loopback addresses and holds them; prints how many stayed open.
ATTACKER = r"""
import json, socket, sys, time
port, legacy_port, per_address, legacy_per_address, first, last = map(int, sys.argv[1:7])
held = []
def open_many(target_port, count, source):
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", target_port))
        except OSError:
            s.close()
            continue
        held.append((target_port, s))
for last_octet in range(first, last + 1):
    open_many(port, per_address, f"127.0.0.{last_octet}")
    if legacy_port:
        open_many(legacy_port, legacy_per_address, f"127.0.0.{last_octet}")
time.sleep(1.0)  # refused ones have their reply and are closed by now
counts = {"tcp": 0, "legacy": 0}
for target_port, s in held:
    s.setblocking(False)
    try:
        gone = s.recv(1, socket.MSG_PEEK) is not None  # a reply or EOF: refused
    except BlockingIOError:
        gone = False
    except OSError:
        gone = True
    if not gone:
        counts["tcp" if target_port == port else "legacy"] += 1
print(json.dumps(counts), flush=True)
sys.stdin.read()  # hold every connection until the test is done
"""


def _config(extra_http: str = "", extra_legacy: str = "", tail: str = "") -> str:
    text = BASE_CONFIG.replace("read_timeout_s = 2", f"read_timeout_s = 60\n{extra_legacy}")
    text = text.replace("[http]\n", f'[http]\ntcp = "127.0.0.1:0"\nheader_timeout_s = 60\n{extra_http}\n', 1)
    return (
        text
        + f"""
[[auth.keys]]
id = "{KEY_A}"
secret = "{SECRET_A}"

[[auth.keys]]
id = "{KEY_B}"
secret = "{SECRET_B}"
{tail}"""
    )


def _launch(
    directory: Path, config_text: str, nofile: tuple[int, int] | None = None, expect_ready: bool = True
) -> Daemon:
    """A daemon subprocess, optionally under a given RLIMIT_NOFILE (soft, hard)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    (directory / "pymgr.toml").write_text(config_text)
    log_path = directory / "daemon.log"

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(PYMGR), "serve", "--config", str(directory / "pymgr.toml")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=limit,
        )
    daemon = Daemon(
        proc=proc, dir=directory, socket=directory / "pymgr.sock", legacy_port=None, log_path=log_path
    )
    if not expect_ready:
        return daemon
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        match = re.search(r" pymgr: ready (\{.*\})", daemon.log())
        if match:
            ready = json.loads(match.group(1))
            daemon.legacy_port = int(ready["legacy"].rsplit(":", 1)[1]) if "legacy" in ready else None
            tcp = [a for a in ready["http"] if a.startswith("tcp:")]
            daemon.tcp_port = int(tcp[0].rsplit(":", 1)[1]) if tcp else None  # type: ignore[attr-defined]
            return daemon
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}:\n{daemon.log()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"daemon not ready:\n{daemon.log()}")


@pytest.fixture
def daemons() -> Iterator[Callable[..., Daemon]]:
    launched: list[Daemon] = []

    def launch(*args: Any, **kwargs: Any) -> Daemon:
        daemon = _launch(*args, **kwargs)
        launched.append(daemon)
        return daemon

    yield launch
    for daemon in launched:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(timeout=10)


def _unix_health(daemon: Daemon, as_user: list[str] | None = None) -> int:
    """The HTTP status of GET /v1/health on the Unix socket, as root or as another user (0: no answer)."""
    out = subprocess.run(
        [
            *(as_user or []),
            "curl",
            "-sS",
            "-m",
            "10",
            "--unix-socket",
            str(daemon.socket),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://pymgr/v1/health",
        ],
        capture_output=True,
        timeout=30,
        cwd="/",
    )
    return int(out.stdout or b"0")


def _attack(
    daemon: Daemon,
    per_address: int,
    legacy_per_address: int,
    first: int = 2,
    last: int = 6,
) -> tuple[subprocess.Popen[str], dict[str, int]]:
    """Start the attacker as nobody; it holds its connections until its stdin closes."""
    proc = subprocess.Popen(
        [
            *AS_NOBODY,
            "/usr/bin/python3",
            "-c",
            ATTACKER,
            str(daemon.tcp_port),  # type: ignore[attr-defined]
            str(daemon.legacy_port or 0),
            str(per_address),
            str(legacy_per_address),
            str(first),
            str(last),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the attacker printed nothing; daemon log:\n{daemon.log()[-3000:]}")
    return proc, json.loads(line)


def _stop_attack(proc: subprocess.Popen[str]) -> None:
    proc.communicate(timeout=30)  # closes its stdin (it lets go of its connections) and its stdout


# --- 12.3: descriptors --------------------------------------------------------------


@needs_root
def test_nobody_flooding_tcp_and_legacy_from_loopback_addresses_leaves_the_unix_socket_answering(
    open_dir: Path, daemons: Callable[..., Daemon]
) -> None:
    # The review's replay: systemd's soft limit of 1024, 1000 TCP connections from 127.0.0.2-6, 100 legacy ones.
    daemon = daemons(open_dir / "d", _config(), nofile=(1024, 4096))
    attacker, held = _attack(daemon, per_address=200, legacy_per_address=20)
    try:
        assert _unix_health(daemon) == 200, daemon.log()[-3000:]
        assert _unix_health(daemon, AS_WWW_DATA) == 200
        # 127.0.0.0/8 is one source: its caps (200 HTTP, 20 legacy), not five times them.
        assert held == {"tcp": 200, "legacy": 20}, held
    finally:
        _stop_attack(attacker)
    assert "soft RLIMIT_NOFILE raised from 1024 to the hard limit 4096" in daemon.log()


@needs_root
def test_tcp_and_legacy_at_their_caps_leave_root_and_www_data_answered_on_the_unix_socket(
    open_dir: Path, daemons: Callable[..., Daemon]
) -> None:
    # Caps that fill most of a 1024 limit (400 + 400 + 100 + 12 audit + 64 reserved = 976); the attacker asks for more.
    config = _config(
        "max_connections = 400\nmax_connections_per_identity = 400\nreserved_fds = 64",
        "max_connections = 100\nmax_connections_per_peer = 100",
    )
    daemon = daemons(open_dir / "d", config, nofile=(1024, 1024))
    attacker, held = _attack(daemon, per_address=100, legacy_per_address=25)  # 500 TCP, 125 legacy
    try:
        assert held == {"tcp": 400, "legacy": 100}, held
        for _ in range(3):
            assert _unix_health(daemon) == 200, daemon.log()[-3000:]
            assert _unix_health(daemon, AS_WWW_DATA) == 200
    finally:
        _stop_attack(attacker)


def test_caps_that_do_not_fit_under_the_descriptor_limit_refuse_start(
    open_dir: Path, daemons: Callable[..., Daemon]
) -> None:
    # 400 x 2 HTTP listeners + 149 legacy + 2 audit reads x 6 files + 64 reserved = 1025, one more than the
    # limit (148 fits: unit tests).
    config = _config("max_connections = 400\nreserved_fds = 64", "max_connections = 149")
    daemon = daemons(open_dir / "d", config, nofile=(1024, 1024), expect_ready=False)
    assert daemon.proc.wait(timeout=30) == 78
    assert re.search(
        r"cannot start: the connection caps could hold more file descriptors than the daemon may open: "
        r"\[http\] max_connections x 2 listeners=800 \+ \[legacy\] max_connections=149 \+ "
        r"\[audit\] read_concurrency x \(backups \+ 1\) files=12 \+ \[http\] "
        r"reserved_fds=64 = 1025 > RLIMIT_NOFILE 1024; lower those keys, or raise the limit",
        daemon.log(),
    ), daemon.log()
    assert not daemon.socket.exists()


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@needs_root
def test_accept_failing_for_want_of_descriptors_is_logged_at_a_bounded_rate_and_the_listener_survives(
    open_dir: Path, daemons: Callable[..., Daemon]
) -> None:
    daemon = daemons(open_dir / "d", _config())
    pid = daemon.proc.pid
    time.sleep(0.5)  # let start-up settle (keeper link, store)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # No descriptor left: every accept() now fails with EMFILE.
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={_fd_count(pid)}:{hard}"], check=True)
    waiting = []
    try:
        for _ in range(40):  # 40 attempts over ~3 s, each one a failed accept
            client = socket.socket(socket.AF_UNIX)
            client.settimeout(10)
            client.connect(str(daemon.socket))  # queued by the kernel, not accepted
            client.sendall(b"GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            waiting.append(client)
            time.sleep(0.075)
    finally:
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={hard}:{hard}"], check=True)
    reports = re.findall(
        r"accept on \S+ failed (\d+) time\(s\) since the last report \(last: EMFILE", daemon.log()
    )
    assert len(reports) == 1, daemon.log()[-3000:]  # one line per 10 s, however many failures
    # The connections that waited in the queue are served once descriptors are back: no reset, no lost listener.
    for client in waiting:
        assert client.recv(12) == b"HTTP/1.1 200"
        client.close()
    assert _unix_health(daemon) == 200


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


# --- 12.7: one key and the nonce cache ------------------------------------------------------


def _signed_post(client: httpx.Client, key_id: str, secret: str, timestamp: int) -> int:
    body = b'{"params": {"text": "x"}}'
    headers = signed_headers(
        key_id,
        secret.encode(),
        "POST",
        "/v1/modules/demo/echo",
        "",
        body,
        timestamp=timestamp,
        nonce=uuid.uuid4().hex,
    )
    return client.post(
        "/v1/modules/demo/echo", content=body, headers={**headers, "content-type": "application/json"}
    ).status_code


@pytest.mark.parametrize(
    ("limits", "flood_statuses"),
    [
        # The rate lets the flood through: the flooder's own quota (200 // 2 keys) stops it with 503.
        ("rate_per_s = 10000\nrate_burst = 10000", {200: 100, 503: 150}),
        # The rate stops it first: a request refused 429 stores no nonce, so the quota is not even reached.
        ("rate_per_s = 0.1\nrate_burst = 60", {200: 60, 429: 190}),
    ],
)
def test_one_key_flooding_the_nonce_cache_at_the_windows_edge_never_refuses_another_key(
    tmp_path: Path, daemons: Callable[..., Daemon], limits: str, flood_statuses: dict[int, int]
) -> None:
    tail = f"\n[limits]\n{limits}\n"
    config = _config(tail=tail)
    config = config.replace(
        "[[auth.keys]]", "[auth]\nnonce_cache_max = 200\nclock_skew_s = 300\n\n[[auth.keys]]", 1
    )
    daemon = daemons(tmp_path / "d", config)
    with httpx.Client(base_url=f"http://127.0.0.1:{daemon.tcp_port}", timeout=30, trust_env=False) as client:  # type: ignore[attr-defined]
        edge = int(time.time()) + 300 - 5  # nonces that live the longest the window allows
        statuses: dict[int, int] = {}
        for _ in range(250):
            status = _signed_post(client, KEY_A, SECRET_A, edge)
            statuses[status] = statuses.get(status, 0) + 1
        assert statuses == flood_statuses
        for _ in range(20):
            assert _signed_post(client, KEY_B, SECRET_B, int(time.time())) == 200


# --- 12.8 / 17.8: group membership --------------------------------------------------------


@pytest.fixture
def group_member() -> Iterator[tuple[str, str, int, int]]:
    """A throw-away user in a throw-away group (root only): (user, group, uid, gid); removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    user, group = f"pmu{tag}", f"pmg{tag}"
    try:
        subprocess.run(["groupadd", group], check=True, capture_output=True)
        subprocess.run(
            ["useradd", "-M", "-N", "-g", "nogroup", "-s", "/usr/sbin/nologin", user],
            check=True,
            capture_output=True,
        )
        subprocess.run(["gpasswd", "-a", user, group], check=True, capture_output=True)
        out = subprocess.run(["id", "-u", user], check=True, capture_output=True, text=True)
        gid = int(subprocess.run(["id", "-g", user], check=True, capture_output=True, text=True).stdout)
        yield user, group, int(out.stdout), gid
    finally:
        subprocess.run(["userdel", user], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)


def _echo_as(daemon: Daemon, uid: int, gid: int) -> int:
    out = subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "curl",
            "-sS",
            "-m",
            "10",
            "--unix-socket",
            str(daemon.socket),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "content-type: application/json",
            "-d",
            '{"params": {"text": "x"}}',
            "http://pymgr/v1/modules/demo/echo",
        ],
        capture_output=True,
        timeout=30,
        cwd="/",
    )
    return int(out.stdout or b"0")


def _group_config(group: str, age: str) -> str:
    config = BASE_CONFIG.replace('subjects = ["any", "legacy"]', 'subjects = ["uid:0", "legacy"]')
    config = config.replace(
        "[modules]",
        f"""[[policy.rules]]
name = "the test group may echo"
subjects = ["group:{group}"]
actions = ["demo.echo"]

[auth]
{age}

[modules]""",
    )
    return config


def _wait_for(daemon: Daemon, text: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in daemon.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{daemon.log()[-2000:]}"
        time.sleep(0.05)


@needs_root
def test_a_user_removed_from_a_group_loses_what_it_allowed_after_sighup(
    open_dir: Path, daemons: Callable[..., Daemon], group_member: tuple[str, str, int, int]
) -> None:
    user, group, uid, gid = group_member
    daemon = daemons(open_dir / "d", _group_config(group, "groups_max_age_s = 3600"))
    assert _echo_as(daemon, uid, gid) == 200
    subprocess.run(["gpasswd", "-d", user, group], check=True, capture_output=True)
    assert _echo_as(daemon, uid, gid) == 200  # within the age and without a reload, the names are kept
    daemon.proc.send_signal(signal.SIGHUP)
    _wait_for(daemon, "config reloaded from")
    assert _echo_as(daemon, uid, gid) == 403


@needs_root
def test_a_user_removed_from_a_group_loses_what_it_allowed_after_the_configured_age(
    open_dir: Path, daemons: Callable[..., Daemon], group_member: tuple[str, str, int, int]
) -> None:
    user, group, uid, gid = group_member
    daemon = daemons(open_dir / "d", _group_config(group, "groups_max_age_s = 1.5"))
    assert _echo_as(daemon, uid, gid) == 200
    subprocess.run(["gpasswd", "-d", user, group], check=True, capture_output=True)
    time.sleep(1.6)
    assert _echo_as(daemon, uid, gid) == 403
