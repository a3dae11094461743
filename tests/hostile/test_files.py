"""Attacks on the files the daemon writes and on its config, replayed on a real daemon.

Each test starts ``pymgr serve`` as a process on a config in a temp dir, with
the attacker's preparation done first (modes, planted links, files of another
user), and checks what the daemon did to the files and what it said.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import BASE_CONFIG, PYMGR, Daemon

#: Exit code of a refused start (EX_CONFIG).
EXIT_CONFIG = 78
NOBODY = 65534


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _refused(directory: Path, config_text: str = BASE_CONFIG, *extra: str) -> str:
    """Start a daemon that must refuse to start; its output."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "pymgr.toml"
    config.write_text(config_text)
    done = subprocess.run(
        [str(PYMGR), "serve", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.umask(0o022),
    )
    output = done.stdout + done.stderr
    assert done.returncode == EXIT_CONFIG, f"exit {done.returncode}, expected a refusal:\n{output}"
    return output


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A root-only file an attacker wants the daemon to overwrite or fill."""
    path = tmp_path / "victim"
    path.write_text("precious\n")
    path.chmod(0o600)
    return path


# --- 12.5: state readable by every local user


def test_state_is_private_whatever_the_umask(start_daemon: Callable[..., Daemon]) -> None:
    old = os.umask(0o022)  # what `make run` and `pymgr daemon` had
    try:
        daemon = start_daemon()
    finally:
        os.umask(old)
    state = daemon.dir / "state"
    assert _mode(state) == 0o700
    assert _mode(state / "run") == 0o700 and _mode(state / "logs") == 0o700
    files = [p for p in state.iterdir() if p.is_file()] + [
        p for p in (state / "run").iterdir() if p.is_file()
    ]
    assert {p.name for p in files} >= {"tasks.db", "audit.log", "daemon.lock"}
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}


def test_sqlite_side_files_are_private(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()
    started = subprocess.run(
        [
            "curl",
            "-sS",
            "--unix-socket",
            str(daemon.socket),
            "-d",
            '{"type": "echo", "params": {"word": "x"}}',
            "http://pymgr/v1/tasks",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert '"id"' in started.stdout, started.stdout
    state = daemon.dir / "state"
    side = [state / "tasks.db-wal", state / "tasks.db-shm"]
    assert all(p.exists() for p in side)
    assert [_mode(p) for p in side] == [0o600, 0o600]


def test_a_wide_state_dir_of_ours_is_tightened_and_said(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    state = tmp_path / "d" / "state"
    (state / "run").mkdir(parents=True)
    state.chmod(0o755)
    (state / "tasks.db").write_bytes(b"")
    (state / "tasks.db").chmod(0o644)
    (state / "audit.log.1").write_text("{}\n")
    (state / "audit.log.1").chmod(0o644)
    daemon = start_daemon()
    assert (
        _mode(state) == 0o700 and _mode(state / "tasks.db") == 0o600 and _mode(state / "audit.log.1") == 0o600
    )
    assert f"{state} had mode 0755: tightened to 0700" in daemon.log()
    assert f"{state / 'audit.log.1'} had mode 0644: tightened to 0600" in daemon.log()


@pytest.mark.root
def test_a_state_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the state directory to another user")
    state = tmp_path / "d" / "state"
    state.mkdir(parents=True)
    os.chown(state, NOBODY, NOBODY)
    output = _refused(tmp_path / "d")
    assert f"{state} is owned by uid {NOBODY}" in output and f"run chown 0 {state}" in output


def test_a_state_dir_others_can_replace_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # no sticky bit: anyone may rename our state directory and put theirs
    config = BASE_CONFIG.replace('state_dir = "state"', f'state_dir = "{shared}/state"')
    output = _refused(tmp_path / "d", config)
    assert (
        f"{shared} (on the way to {shared}/state) is writable by every user; run chmod o-w {shared}" in output
    )


@pytest.mark.root
def test_nobody_cannot_read_the_records(start_daemon: Callable[..., Daemon], open_dir: Path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to read as nobody")
    daemon = start_daemon(base=open_dir)
    open_dir.joinpath("d").chmod(0o755)
    read = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "cat",
            str(daemon.dir / "state" / "tasks.db"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert read.returncode != 0 and "Permission denied" in read.stderr


# --- 12.6: symlinks in the state directory


@pytest.mark.parametrize(
    "name",
    [
        "run/daemon.lock",
        "run/keeper.lock",
        "run/keeper.log",
        "tasks.db",
        "tasks.db-wal",
        "tasks.db-shm",
        "audit.log",
    ],
)
def test_a_planted_link_is_refused_and_its_target_untouched(tmp_path: Path, victim: Path, name: str) -> None:
    state = tmp_path / "d" / "state"
    (state / "run").mkdir(parents=True)
    (state / name).symlink_to(victim)
    output = _refused(tmp_path / "d")
    assert f"{state / name} is a symbolic link" in output
    assert victim.read_text() == "precious\n" and _mode(victim) == 0o600


def test_a_log_file_link_is_refused_and_its_target_untouched(tmp_path: Path, victim: Path) -> None:
    state = tmp_path / "d" / "state"
    state.mkdir(parents=True)
    (state / "pymgr.log").symlink_to(victim)
    output = _refused(tmp_path / "d", BASE_CONFIG, "--log-file", str(state / "pymgr.log"))
    assert "is a symbolic link" in output
    assert victim.read_text() == "precious\n"


def test_a_hard_link_to_a_root_file_is_not_written(tmp_path: Path, victim: Path) -> None:
    state = tmp_path / "d" / "state"
    state.mkdir(parents=True)
    os.link(victim, state / "audit.log")
    output = _refused(tmp_path / "d")
    assert "has 2 hard links" in output
    assert victim.read_text() == "precious\n"


# --- 12.13: secrets in a config others can read

SECRET_CONFIG = BASE_CONFIG.replace("[security]\npublic_secrets = true\n", "")


def test_inline_secrets_in_a_readable_config_are_refused(tmp_path: Path) -> None:
    output = _refused(tmp_path / "d", SECRET_CONFIG)
    config = tmp_path / "d" / "pymgr.toml"
    assert f"{config} holds secrets inline (legacy.secret) and has mode 0644" in output
    assert f"run chmod 600 {config}" in output and "public_secrets = true" in output


def test_inline_secrets_in_a_private_config_start(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    config = directory / "pymgr.toml"
    config.write_text(SECRET_CONFIG)
    config.chmod(0o600)
    proc = subprocess.Popen([str(PYMGR), "serve", "--config", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if " pymgr: ready " in line:
                break
        else:
            pytest.fail(f"exited with {proc.wait()}")
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_declared_public_secrets_start_and_are_said_loudly(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()  # BASE_CONFIG declares its test secret public; the file is 0644
    assert _mode(daemon.dir / "pymgr.toml") == 0o644
    assert "CONFIG SECRETS ARE PUBLIC: [security] public_secrets = true" in daemon.log()
    assert "(legacy.secret)" in daemon.log()


# --- 17.5: relative paths resolved through symlinks


def test_a_relative_audit_path_through_a_link_is_refused(tmp_path: Path, victim: Path) -> None:
    auditdir = tmp_path / "d" / "auditdir"
    auditdir.mkdir(parents=True)
    (auditdir / "audit.log").symlink_to(victim)
    output = _refused(tmp_path / "d", BASE_CONFIG + '\n[audit]\npath = "auditdir/audit.log"\n')
    assert f"{auditdir / 'audit.log'} is a symbolic link" in output
    assert victim.read_text() == "precious\n"


@pytest.mark.root
def test_an_audit_dir_another_user_owns_is_refused(tmp_path: Path, victim: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the audit directory to another user")
    auditdir = tmp_path / "d" / "auditdir"
    auditdir.mkdir(parents=True)
    os.chown(auditdir, NOBODY, NOBODY)
    output = _refused(tmp_path / "d", BASE_CONFIG + '\n[audit]\npath = "auditdir/audit.log"\n')
    assert f"{auditdir} is owned by uid {NOBODY}" in output
    assert not (auditdir / "audit.log").exists()


# --- 17.6: a config anyone can write


def test_a_world_writable_config_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    config = directory / "pymgr.toml"
    config.write_text(BASE_CONFIG)
    config.chmod(0o666)
    done = subprocess.run(
        [str(PYMGR), "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT_CONFIG
    assert f"{config} is writable by every user; run chmod o-w {config}" in done.stderr


def test_a_config_in_a_world_writable_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    directory.chmod(0o777)
    output = _refused(directory)
    assert f"{directory} (on the way to {directory}/pymgr.toml) is writable by every user" in output


def _www_data() -> int:
    try:
        return pwd.getpwnam("www-data").pw_uid
    except KeyError:
        return NOBODY


@pytest.mark.root
def test_a_config_owned_by_www_data_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the config to another user")
    directory = tmp_path / "d"
    directory.mkdir()
    config = directory / "pymgr.toml"
    config.write_text(BASE_CONFIG)
    os.chown(config, _www_data(), -1)
    done = subprocess.run(
        [str(PYMGR), "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT_CONFIG
    assert f"{config} is owned by uid {_www_data()}" in done.stderr


def test_a_writable_command_executable_is_refused(tmp_path: Path) -> None:
    exe = tmp_path / "tool.sh"
    exe.write_text("#!/bin/sh\necho hi\n")
    exe.chmod(0o777)
    output = _refused(tmp_path / "d", BASE_CONFIG + f'\n[commands.tool]\nargv = ["{exe}"]\n')
    assert f"[commands.tool] argv[0]: {exe} is writable by every user" in output


def test_an_open_base_dir_of_a_root_command_is_warned_about(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the warning is for commands that run as root")
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    uploads.chmod(0o777)
    daemon = start_daemon(
        BASE_CONFIG + '\n[commands.show]\nargv = ["/bin/cat", "{f}"]\n'
        f'[commands.show.params]\nf = {{ type = "path", base = "{uploads}" }}\n'
    )
    assert f"[commands.show] param 'f': base {uploads} is not protected" in daemon.log()
