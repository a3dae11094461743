from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from pymgr.transport.listeners import ListenerError, bind_tcp, bind_unix, unix_path_of


def test_unix_socket_gets_mode_and_is_listening(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "p.sock"
    sock = bind_unix(path, 0o660)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert unix_path_of(sock) == path
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))
        client.close()
    finally:
        sock.close()


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "p.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: a crashed daemon's leftover
    bind_unix(path, 0o600).close()


def test_live_socket_is_not_stolen(tmp_path: Path) -> None:
    path = tmp_path / "p.sock"
    live = bind_unix(path, 0o600)
    try:
        with pytest.raises(
            ListenerError, match=rf"^another daemon is already listening on {path}; stop it first$"
        ):
            bind_unix(path, 0o600)
    finally:
        live.close()


def test_non_socket_file_is_never_removed(tmp_path: Path) -> None:
    path = tmp_path / "p.sock"
    path.write_text("precious")
    with pytest.raises(ListenerError, match=r"exists and is not a socket; refusing to remove it$"):
        bind_unix(path, 0o600)
    assert path.read_text() == "precious"


def test_unknown_group(tmp_path: Path) -> None:
    with pytest.raises(ListenerError, match=r"^socket_group 'no-such-group-x' is not a group on this host$"):
        bind_unix(tmp_path / "p.sock", 0o660, "no-such-group-x")


def test_group_is_applied(tmp_path: Path) -> None:
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    path = tmp_path / "p.sock"
    bind_unix(path, 0o660, group).close()
    assert path.stat().st_gid == os.getgid()


def test_tcp_ephemeral_and_in_use() -> None:
    sock = bind_tcp("127.0.0.1:0")
    try:
        port = sock.getsockname()[1]
        assert port > 0 and unix_path_of(sock) is None
        with pytest.raises(
            ListenerError, match=rf"^cannot bind TCP 127\.0\.0\.1:{port}: .*\(is another daemon running\?\)$"
        ):
            bind_tcp(f"127.0.0.1:{port}")
    finally:
        sock.close()


def test_socket_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(
        ListenerError,
        match=r"^cannot create the directory of Unix socket .*/file/p\.sock: (Not a directory|File exists)$",
    ):
        bind_unix(tmp_path / "file" / "p.sock", 0o600)
