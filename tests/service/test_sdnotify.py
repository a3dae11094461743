"""sd_notify: the Notifier against real datagram sockets, and `pymgr serve` under a fake systemd."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymgr.client import Client
from pymgr.service.sdnotify import Notifier, ping_watchdog, watchdog_interval_s
from tests.conftest import BASE_CONFIG, PYMGR
from tests.service.helpers import WAIT_S


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for systemd's notification socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(WAIT_S)
    yield str(path), sock
    sock.close()


def test_ready_reaches_a_path_socket(notify_socket: tuple[str, socket.socket]) -> None:
    address, sock = notify_socket
    notifier = Notifier(address)
    assert notifier.ready("serving\nunix:/x")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving unix:/x"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.close()


def test_abstract_names_start_with_an_at_sign() -> None:
    name = f"pymgr-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier("@" + name)
        assert notifier.status("hello")
        assert sock.recv(4096) == b"STATUS=hello"
        notifier.close()


def test_reloading_carries_the_monotonic_time(notify_socket: tuple[str, socket.socket]) -> None:
    address, sock = notify_socket
    notifier = Notifier(address)
    notifier.reloading()
    assert re.match(rb"^RELOADING=1\nMONOTONIC_USEC=\d+$", sock.recv(4096))
    notifier.close()


def test_without_a_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier(None)
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False


def test_a_relative_address_turns_notifications_off(caplog: pytest.LogCaptureFixture) -> None:
    assert Notifier("vsock:2:1234").enabled is False
    assert re.search(r"NOTIFY_SOCKET='vsock:2:1234' is neither a path nor an @abstract name", caplog.text)


def test_fields_are_checked() -> None:
    with pytest.raises(ValueError, match=r"^sd_notify fields are KEY=value without newlines, not 'READY'$"):
        Notifier(None).send("READY")
    with pytest.raises(
        ValueError, match=r"^sd_notify fields are KEY=value without newlines, not 'A=1\\nB=2'$"
    ):
        Notifier(None).send("A=1\nB=2")


def test_from_env_takes_the_variable_out() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "OTHER": "1"}
    assert Notifier.from_env(env).address == "/run/systemd/notify"
    assert env == {"OTHER": "1"}


def test_a_failed_send_is_logged_once_and_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    with caplog.at_level(logging.WARNING, logger="pymgr.service"):
        assert notifier.watchdog() is False
        assert notifier.watchdog() is False
    notifier.close()
    assert len([r for r in caplog.records if "sd_notify to" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("env", "pid", "expected"),
    [
        ({}, 10, None),
        ({"WATCHDOG_USEC": "30000000"}, 10, 15.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "10"}, 10, 0.1),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "11"}, 10, None),  # another process's watchdog
        ({"WATCHDOG_USEC": "0"}, 10, None),
        ({"WATCHDOG_USEC": "soon"}, 10, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], pid: int, expected: float | None
) -> None:
    assert watchdog_interval_s(env, pid) == expected
    assert "WATCHDOG_USEC" not in env and "WATCHDOG_PID" not in env


async def test_ping_watchdog_pings_until_cancelled(notify_socket: tuple[str, socket.socket]) -> None:
    address, sock = notify_socket
    notifier = Notifier(address)
    task = asyncio.get_running_loop().create_task(ping_watchdog(notifier, 0.01))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    notifier.close()
    sock.setblocking(False)
    pings = []
    while True:
        try:
            pings.append(sock.recv(64))
        except BlockingIOError:
            break
    assert len(pings) >= 3 and set(pings) == {b"WATCHDOG=1"}


async def test_ping_watchdog_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError, match=r"^interval_s must be positive, not 0$"):
        await ping_watchdog(Notifier(None), 0)


def _recv_until(sock: socket.socket, field: bytes) -> list[bytes]:
    messages = []
    while True:
        message = sock.recv(4096)
        messages.append(message)
        if field in message.split(b"\n"):
            return messages


def test_serve_notifies_ready_after_bind_then_watchdog_then_stopping(
    tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    """`pymgr serve` as systemd runs it: READY=1 once the API answers, WATCHDOG=1, STOPPING=1."""
    address, sock = notify_socket
    (tmp_path / "pymgr.toml").write_text(BASE_CONFIG)
    log_file = tmp_path / "log" / "pymgr.jsonl"
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen(
        [
            str(PYMGR),
            "serve",
            "--config",
            str(tmp_path / "pymgr.toml"),
            "--log-format",
            "json",
            "--log-file",
            str(log_file),
        ],
        env=env,
    )
    try:
        first = sock.recv(4096)
        # Bound and serving by the time READY=1 arrives: the API answers at once.
        assert re.match(rb"^READY=1\nSTATUS=serving unix:\S+/pymgr.sock; legacy tcp:127.0.0.1:\d+$", first)
        with Client(socket=tmp_path / "pymgr.sock") as client:
            assert client.health().status == "ok"
        started = time.monotonic()
        pings = [
            m
            for m in _recv_until(sock, b"WATCHDOG=1") + _recv_until(sock, b"WATCHDOG=1")
            if m == b"WATCHDOG=1"
        ]
        assert len(pings) == 2 and time.monotonic() - started < 2.0  # every 0.1 s
        proc.send_signal(signal.SIGTERM)
        assert any(m.startswith(b"STOPPING=1\n") for m in _recv_until(sock, b"STOPPING=1"))
        assert proc.wait(timeout=WAIT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert {"time", "level", "logger", "message", "pid"} <= set(entries[0])
    assert any(e["message"].startswith("ready ") and e["logger"] == "pymgr" for e in entries)
    assert entries[-1]["message"] == "stopped"
