"""The console on a Unix socket (``listen = "unix:PATH"``), so that only the proxy's user can name a
person: a real console serving the socket (and, beside it, a TCP port to show what is refused there),
a real daemon, and ``pymgr console`` as a real command."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from pymgr.console.config import ConsoleConfigError, load_config
from pymgr.console.listener import ListenError, bind_unix, group_id
from tests.conftest import PYMGR, wait_for
from tests.console.conftest import Console, form_token, submit_login

PROXY = {"trusted_proxies": ["unix"], "proxy_user_header": "X-Remote-User"}


def _unix(open_dir: Path, **settings: object) -> dict[str, object]:
    return {"listen": f"unix:{open_dir / 'console.sock'}", **settings}


def test_the_proxy_on_the_socket_signs_the_person_in_and_the_daemon_audits_them(
    start_console: Callable[..., Console], open_dir: Path
) -> None:
    console = start_console(**_unix(open_dir, **PROXY, proxy_default_roles=["operators"]))
    with closing(console.http_unix()) as http:
        http.headers["x-remote-user"] = "carol@example.com"
        page = http.get("/actions")
        assert page.status_code == 200 and "carol@example.com" in page.text
        called = http.post("/actions/demo/echo", data={"csrf": form_token(page.text)})
        assert called.status_code == 200, called.text
    line = wait_for(lambda: next((a for a in console.audit() if a["operation"] == "demo.echo"), None))
    assert line["identity"]["person"] == "console:carol@example.com" and line["outcome"] == "ok"


def test_forwarded_for_and_proto_are_believed_from_the_socket(
    start_console: Callable[..., Console], open_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    console = start_console(**_unix(open_dir, **PROXY))
    caplog.set_level(logging.INFO, "pymgr.console")
    with closing(console.http_unix()) as http:
        http.headers["x-forwarded-for"] = "203.0.113.9"
        assert submit_login(http, "alice", "alice-password-1").status_code == 303
    with closing(console.http_unix()) as http:
        page = http.get("/tasks", headers={"x-remote-user": "bob", "x-forwarded-proto": "https"})
        cookie = page.headers["set-cookie"]  # the browser's https, told by the proxy: a secure cookie
        assert page.status_code == 200 and cookie.startswith("__Host-pymgr_console=") and "Secure" in cookie
    assert "login of alice from 203.0.113.9" in caplog.text
    assert "sign-in of bob by the proxy unix" in caplog.text


def test_the_header_over_tcp_is_refused_when_only_the_socket_is_trusted(
    start_console: Callable[..., Console], open_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    console = start_console(**_unix(open_dir, **PROXY))
    caplog.set_level(logging.WARNING, "pymgr.console")
    with closing(console.http()) as http:  # 127.0.0.1: any local process
        reply = http.get("/tasks", headers={"x-remote-user": "alice", "x-forwarded-for": "unix"})
        assert reply.status_code == 403 and "believed from the sign-in proxy only" in reply.text
    assert "refused a request with X-Remote-User from 127.0.0.1" in caplog.text
    with closing(console.http_unix()) as http:
        assert http.get("/tasks", headers={"x-remote-user": "alice"}).status_code == 200


def test_the_socket_is_not_trusted_unless_listed(
    start_console: Callable[..., Console], open_dir: Path
) -> None:
    console = start_console(
        **_unix(open_dir, trusted_proxies=["127.0.0.1"], proxy_user_header="X-Remote-User")
    )
    with closing(console.http_unix()) as http:
        reply = http.get("/tasks", headers={"x-remote-user": "alice", "x-forwarded-for": "127.0.0.1"})
        assert reply.status_code == 403


def _group_not_mine() -> int:
    if os.geteuid() == 0:
        return grp.getgrnam("nogroup").gr_gid
    return os.getgid()


def test_the_socket_has_the_configured_mode_and_group_and_goes_at_close(open_dir: Path) -> None:
    path = open_dir / "c.sock"
    for mode in (0o660, 0o600, 0o640):
        listener = bind_unix(path, mode, group=_group_not_mine())
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == mode
        assert st.st_gid == _group_not_mine()
        listener.close()
        assert not path.exists()


def test_close_leaves_a_socket_another_console_bound_since(open_dir: Path) -> None:
    path = open_dir / "c.sock"
    first = bind_unix(path, 0o660)
    path.unlink()
    second = bind_unix(path, 0o660)
    first.close()
    assert stat.S_ISSOCK(path.lstat().st_mode)
    second.close()
    assert not path.exists()


def test_a_stale_socket_is_replaced_and_a_live_one_refused(open_dir: Path) -> None:
    path = open_dir / "c.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # bound, never listening, closed: what a killed console leaves
    listener = bind_unix(path, 0o660)
    with pytest.raises(ListenError, match=r"something already listens on .*c\.sock; stop it first"):
        bind_unix(path, 0o660)
    listener.close()


@pytest.mark.parametrize("kind", ["file", "symlink", "directory"])
def test_anything_else_in_the_way_is_refused_and_left(open_dir: Path, kind: str) -> None:
    path, target = open_dir / "c.sock", open_dir / "target"
    target.write_text("keep me\n")
    if kind == "file":
        path.write_text("keep me\n")
    elif kind == "symlink":
        path.symlink_to(target)
    else:
        path.mkdir()
    what = "a symlink" if kind == "symlink" else "not a socket"
    with pytest.raises(ListenError, match=f"c.sock exists and is {what}; refusing to remove it"):
        bind_unix(path, 0o660)
    assert target.read_text() == "keep me\n" and (path.is_symlink() or path.exists())


def test_a_missing_directory_an_unknown_group_or_one_not_mine_is_a_clear_error(open_dir: Path) -> None:
    with pytest.raises(ListenError, match=r"the socket's directory .*nowhere does not exist"):
        bind_unix(open_dir / "nowhere" / "c.sock", 0o660)
    with pytest.raises(ListenError, match="listen_group 'no-such-group' is not a group on this host"):
        group_id("no-such-group")
    assert group_id("4242") == 4242
    if os.geteuid() != 0:
        with pytest.raises(ListenError, match="must be a member of listen_group"):
            bind_unix(open_dir / "c.sock", 0o660, group=grp.getgrnam("root").gr_gid)
        assert not (open_dir / "c.sock").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('listen = "unix:"', "listen = unix:PATH names the socket's file"),
        ("listen_mode = 0o660", "listen_mode and listen_group are for listen = unix:PATH"),
        ('listen_group = "www-data"', "listen_mode and listen_group are for listen = unix:PATH"),
        ('trusted_proxies = ["unix"]', 'trusted_proxies "unix" needs listen = unix:PATH'),
        ('listen = "unix:c.sock"\nlisten_mode = "0660"', "listen_mode: Input should be a valid integer"),
        ('listen = "unix:c.sock"\nlisten_mode = 0o1777', "listen_mode: Input should be less than"),
        ('listen = "unix:c.sock"\nlisten_group = "a b"', "listen_group is a group's name or number"),
        (
            'listen = "unix:c.sock"\nlisten_mode = 0o662\ntrusted_proxies = ["unix"]',
            "listen_mode 0o662 lets every local user connect",
        ),
    ],
)
def test_bad_socket_settings_are_config_errors(tmp_path: Path, settings: str, message: str) -> None:
    path = tmp_path / "console.toml"
    path.write_text(f"[console]\n{settings}\n")
    with pytest.raises(ConsoleConfigError, match=message):
        load_config(path)


def test_a_relative_socket_path_is_the_config_files_directorys(tmp_path: Path) -> None:
    path = tmp_path / "console.toml"
    path.write_text('[console]\nlisten = "unix:run/c.sock"\ntrusted_proxies = ["unix"]\n')
    assert load_config(path).listen_path() == tmp_path / "run" / "c.sock"


def _run_console(config: Path, sock: Path) -> subprocess.Popen[bytes]:
    log = config.parent / "console.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(PYMGR), "console", "--config", str(config)], stdout=out, stderr=out)
    deadline = time.monotonic() + 30
    while True:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(sock))
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as http:
        assert http.get("http://127.0.0.1/login").status_code == 200
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == -signal.SIGTERM  # as uvicorn ends: of the signal, its socket removed


def test_pymgr_console_serves_the_socket_and_removes_it_at_exit(open_dir: Path) -> None:
    user = 'user = "nobody"\n' if os.geteuid() == 0 else ""
    run = open_dir / "run"
    run.mkdir()
    if user:
        os.chown(run, pwd.getpwnam("nobody").pw_uid, -1)  # as systemd's RuntimeDirectory= would
    config = open_dir / "console.toml"
    sock = run / "c.sock"
    config.write_text(
        f'[console]\n{user}listen = "unix:{sock}"\nlisten_mode = 0o640\nsocket = "none.sock"\n'
        f'listen_group = "{_group_not_mine()}"\n'
    )
    proc = _run_console(config, sock)
    try:
        st = sock.lstat()
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == _group_not_mine()
        assert st.st_uid == (pwd.getpwnam("nobody").pw_uid if user else os.getuid())
    finally:
        _stop(proc)
    assert not sock.exists()
    (run / "c.sock").write_text("in the way\n")
    out = subprocess.run([str(PYMGR), "console", "--config", str(config)], capture_output=True, text=True)
    assert out.returncode == 1 and "exists and is not a socket; refusing to remove it" in out.stderr
