"""Socket activation: LISTEN_FDS parsing on real sockets, and `pymgr serve` under systemd-socket-activate."""

from __future__ import annotations

import hmac
import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pymgr.client import Client
from pymgr.config import Config
from pymgr.service import activation
from pymgr.service.activation import ActivationError, check_against, listen_fds
from tests.conftest import BASE_CONFIG, LEGACY_SECRET, PYMGR
from tests.service.helpers import WAIT_S, free_port, wait_for

#: Where the tests place "passed" fds: far above anything pytest has open.
FIRST_FD = 700


@pytest.fixture
def pass_fds() -> Iterator[Callable[..., dict[str, str]]]:
    """Put sockets at FIRST_FD, FIRST_FD+1, ... as systemd would at 3, 4, ...; returns the env."""
    placed: list[int] = []

    def place(*socks: socket.socket, names: str | None = None) -> dict[str, str]:
        for offset, sock in enumerate(socks):
            os.dup2(sock.fileno(), FIRST_FD + offset)
            placed.append(FIRST_FD + offset)
            sock.close()
        env = {"LISTEN_PID": "42", "LISTEN_FDS": str(len(socks))}
        if names is not None:
            env["LISTEN_FDNAMES"] = names
        return env

    yield place
    for fd in placed:
        try:
            os.close(fd)
        except OSError:
            pass  # adopted and closed by the test


def _listening_unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    return sock


def _listening_tcp() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _close(passed: dict[str, list[socket.socket]]) -> None:
    activation.close_all(passed)


def test_nothing_passed_is_an_empty_map() -> None:
    assert listen_fds({}, pid=42) == {}


def test_variables_for_another_process_are_ignored_and_removed() -> None:
    env = {"LISTEN_PID": "41", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}
    assert listen_fds(env, pid=42, first_fd=FIRST_FD) == {}
    assert env == {}


@pytest.mark.parametrize("count", ["x", "0", "65", "-1"])
def test_a_bad_count_is_refused(count: str) -> None:
    with pytest.raises(
        ActivationError, match=rf"^LISTEN_FDS must be a number of sockets from 1 to 64, not '{count}'$"
    ):
        listen_fds({"LISTEN_PID": "42", "LISTEN_FDS": count}, pid=42, first_fd=FIRST_FD)


def test_64_sockets_is_the_limit_and_is_accepted_as_a_count(pass_fds: Callable[..., dict[str, str]]) -> None:
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "64", "LISTEN_FDNAMES": ":".join(["bogus"] * 64)}
    with pytest.raises(ActivationError, match=rf"^passed socket fd {FIRST_FD} is named 'bogus'"):
        listen_fds(env, pid=42, first_fd=FIRST_FD)


def test_names_must_match_the_count(pass_fds: Callable[..., dict[str, str]], tmp_path: Path) -> None:
    env = pass_fds(_listening_unix(tmp_path / "a.sock"), names="http:legacy")
    with pytest.raises(
        ActivationError, match=r"^LISTEN_FDNAMES names 2 sockets but LISTEN_FDS is 1: 'http:legacy'$"
    ):
        listen_fds(env, pid=42, first_fd=FIRST_FD)


@pytest.mark.parametrize("names", [None, "unknown", ""])
def test_unnamed_sockets_serve_http(
    pass_fds: Callable[..., dict[str, str]], tmp_path: Path, names: str | None
) -> None:
    env = pass_fds(_listening_unix(tmp_path / "a.sock"), names=names)
    passed = listen_fds(env, pid=42, first_fd=FIRST_FD)
    assert list(passed) == ["http"] and passed["http"][0].getsockname() == str(tmp_path / "a.sock")
    assert not passed["http"][0].get_inheritable() and not passed["http"][0].getblocking()
    assert env == {}
    _close(passed)


def test_named_sockets_go_to_their_listeners(pass_fds: Callable[..., dict[str, str]], tmp_path: Path) -> None:
    env = pass_fds(
        _listening_unix(tmp_path / "a.sock"), _listening_tcp(), _listening_tcp(), names="http:http-tcp:legacy"
    )
    passed = listen_fds(env, pid=42, first_fd=FIRST_FD)
    assert sorted(passed) == ["http", "http-tcp", "legacy"]
    assert [s.family for s in passed["legacy"]] == [socket.AF_INET]
    _close(passed)


def test_an_unknown_name_is_refused_with_the_known_ones(pass_fds: Callable[..., dict[str, str]]) -> None:
    env = pass_fds(_listening_tcp(), names="metrics")
    with pytest.raises(
        ActivationError,
        match=rf"^passed socket fd {FIRST_FD} is named 'metrics'; pymgr serves http, http-tcp, legacy: "
        r"set FileDescriptorName= in the socket unit to one of them$",
    ):
        listen_fds(env, pid=42, first_fd=FIRST_FD)


def test_a_socket_that_does_not_listen_is_refused(pass_fds: Callable[..., dict[str, str]]) -> None:
    quiet = socket.socket()
    quiet.bind(("127.0.0.1", 0))
    env = pass_fds(quiet, names="http")
    with pytest.raises(
        ActivationError, match=rf"^passed fd {FIRST_FD} \(http\) is not a listening stream socket"
    ):
        listen_fds(env, pid=42, first_fd=FIRST_FD)


def test_a_datagram_socket_is_refused(pass_fds: Callable[..., dict[str, str]]) -> None:
    env = pass_fds(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), names="http")
    with pytest.raises(
        ActivationError, match=rf"^passed fd {FIRST_FD} \(http\) is not a listening stream socket"
    ):
        listen_fds(env, pid=42, first_fd=FIRST_FD)


def test_legacy_sockets_must_fit_the_config(tmp_path: Path) -> None:
    enabled = Config.model_validate({"legacy": {"enabled": True, "secret": "s"}})
    tcp, tcp2, unix = _listening_tcp(), _listening_tcp(), _listening_unix(tmp_path / "l.sock")
    try:
        with pytest.raises(
            ActivationError, match=r"^a socket named 'legacy' was passed but \[legacy\] enabled = false"
        ):
            check_against(Config(), {"legacy": [tcp]})
        with pytest.raises(
            ActivationError, match=r"^2 sockets named 'legacy' were passed; the legacy listener takes one$"
        ):
            check_against(enabled, {"legacy": [tcp, tcp2]})
        with pytest.raises(ActivationError, match=r"^the socket named 'legacy' must be TCP"):
            check_against(enabled, {"legacy": [unix]})
        check_against(enabled, {"legacy": [tcp], "http": [unix]})
    finally:
        for sock in (tcp, tcp2, unix):
            sock.close()


# -- end to end: systemd-socket-activate passes the sockets as systemd does ---------


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed (Debian package systemd)",
)
def test_serve_takes_its_listeners_from_systemd_socket_activate(tmp_path: Path) -> None:
    """The API on a passed Unix socket, the legacy protocol on a passed TCP port; the daemon binds neither."""
    (tmp_path / "pymgr.toml").write_text(BASE_CONFIG)
    api = tmp_path / "api.sock"
    port = free_port()
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                "systemd-socket-activate",
                "-l",
                str(api),
                "-l",
                f"127.0.0.1:{port}",
                "--fdname=http:legacy",
                "-E",
                "PYTHONUNBUFFERED=1",
                str(PYMGR),
                "serve",
                "--config",
                str(tmp_path / "pymgr.toml"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(api.exists, what="the activation socket")
        # the first connection makes systemd-socket-activate exec the daemon
        with Client(socket=api) as client:
            assert client.health().pid == proc.pid
            assert client.call("demo", "echo", x=1) == {"x": 1}
        # The old clients' bytes, on the passed TCP socket.
        signature = hmac.new(LEGACY_SECRET.encode(), b"demo", "md5").hexdigest()
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as conn:
            conn.sendall(f"module:demo\naction:echo\nsignature:{signature}\nx:1\n\n".encode())
            reply = json.loads(conn.makefile("rb").read())
        assert reply == {"success": True, "msg": {"x": "1"}}
        log_text = wait_for(
            lambda: (t := log_path.read_text()) and " pymgr: ready " in t and t, what="ready line"
        )
        assert re.search(
            rf'ready {{"http": \["unix:{re.escape(str(api))}"\].*"legacy": "tcp:127.0.0.1:{port}"',
            str(log_text),
        )
        assert not (tmp_path / "pymgr.sock").exists()  # the configured socket was never bound
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S) == 0
        assert api.exists()  # the passed socket's file is the service manager's, not ours to remove
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
