"""``pymgr console`` and ``pymgr console adduser`` as real commands, and the users file they keep."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from pymgr.console import users
from tests.conftest import PYMGR


def _pymgr(*argv: str, input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYMGR), *argv], capture_output=True, text=True, input=input, timeout=60, cwd=cwd
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "console.toml"
    path.write_text('[console]\nusers_file = "users.json"\nlisten = "127.0.0.1:0"\n')
    return path


def test_adduser_asks_twice_and_keeps_an_argon2id_hash_in_a_0600_file(config: Path) -> None:
    out = _pymgr(
        "console",
        "adduser",
        "alice",
        "--config",
        str(config),
        "--role",
        "operators",
        input="s3cret-pass\ns3cret-pass\n",
    )
    assert out.returncode == 0, out.stderr
    path = config.parent / "users.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "s3cret-pass" not in path.read_text() and "$argon2id$" in path.read_text()
    known = users.load(path)
    assert known["alice"].roles == ("operators",)
    assert users.verify(known, "alice", "s3cret-pass") is not None
    assert users.verify(known, "alice", "wrong") is None and users.verify(known, "bob", "s3cret-pass") is None


def test_adduser_refuses_two_different_passwords_and_bad_names(config: Path, tmp_path: Path) -> None:
    out = _pymgr("console", "adduser", "alice", "--config", str(config), input="first-pass\nsecond-pass\n")
    assert out.returncode == 1 and "the two passwords differ; nothing was changed" in out.stderr
    assert not (config.parent / "users.json").exists()
    secret = tmp_path / "pw"
    secret.write_text("short\n")
    out = _pymgr("console", "adduser", "alice", "--config", str(config), "--password-file", str(secret))
    assert out.returncode == 1 and "at least 8 characters" in out.stderr
    out = _pymgr("console", "adduser", "user:root", "--config", str(config), "--password-file", str(secret))
    assert out.returncode == 1 and "not 'user:root'" in out.stderr


def test_a_users_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    users.add(path, "alice", "long-enough", [])
    path.chmod(0o644)
    with pytest.raises(users.UsersFileError, match=r"mode 0644; it holds password hashes: chmod 600 it$"):
        users.load(path)


def test_a_bad_config_is_named_with_its_setting(tmp_path: Path) -> None:
    path = tmp_path / "console.toml"
    path.write_text('[console]\nlisten = "8765"\nsession_idle_s = 0\nlisen = "x"\n')
    out = _pymgr("console", "--config", str(path))
    assert out.returncode == 1
    assert "listen: Value error, listen must be HOST:PORT" in out.stderr
    assert (
        "session_idle_s: Input should be greater than 0" in out.stderr and "lisen: Extra inputs" in out.stderr
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can be refused as root, or switch users")
def test_as_root_it_refuses_without_a_user_and_switches_with_one(config: Path, open_dir: Path) -> None:
    out = _pymgr("console", "--config", str(config))
    assert out.returncode == 1 and "the console never serves as root: set user" in out.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shared = open_dir / "console.toml"
    shared.write_text(f'[console]\nuser = "nobody"\nlisten = "127.0.0.1:{port}"\nsocket = "none.sock"\n')
    with (open_dir / "console.log").open("wb") as log:
        proc = subprocess.Popen([str(PYMGR), "console", "--config", str(shared)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/login").status_code == 200
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    open_dir / "console.log"
                ).read_text()
                time.sleep(0.1)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert set(uid_line.split()[1:]) == {str(65534)}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
