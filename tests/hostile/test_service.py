"""Attacks on the files pymgr writes as root outside its state directory: the pidfile and the systemd units.

Each test replays an attack a review confirmed, with real `pymgr` processes.
The hostile user is www-data: what it does runs as www-data (a child with
its uid, gid and no other groups); those tests need root and are marked so.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymgr.service.systemd_units import MARKER
from tests.conftest import BASE_CONFIG
from tests.service.helpers import pid_alive, pymgr

try:
    WWW_DATA: pwd.struct_passwd | None = pwd.getpwnam("www-data")
except KeyError:
    WWW_DATA = None

#: An interpreter www-data may run (the test's own may sit under root's home).
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"

as_root = pytest.mark.skipif(
    os.geteuid() != 0 or WWW_DATA is None or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="replays what www-data does to root's files: needs root, www-data and /usr/bin/python3",
)


def as_www_data(*argv: str) -> None:
    """Run ``argv`` as www-data (its uid and gid, no other groups)."""
    assert WWW_DATA is not None
    subprocess.run(argv, user=WWW_DATA.pw_uid, group=WWW_DATA.pw_gid, extra_groups=[], check=True, timeout=30)


def give_to_www_data(*paths: Path) -> None:
    assert WWW_DATA is not None
    for path in paths:
        os.chown(path, WWW_DATA.pw_uid, WWW_DATA.pw_gid)


def root_only_file(path: Path, text: str = "root's own\n") -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


# -- pymgr service install ----------------------------------------------------------------


@pytest.mark.root
@as_root
def test_a_link_planted_in_a_prefix_www_data_owns_is_never_written_through(
    open_dir: Path, tmp_path: Path
) -> None:
    """Was: the unit text went into the root-only file, which became 0644, and the unit became www-data's link."""
    secret = root_only_file(open_dir / "secret")
    prefix = open_dir / "prefix"
    unit_dir = prefix / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    give_to_www_data(prefix, prefix / "etc", prefix / "etc/systemd", unit_dir)
    for name in ("pymgr.service", "pymgr.socket"):
        as_www_data("ln", "-s", str(secret), str(unit_dir / f".{name}.tmp"))
    config = tmp_path / "pymgr.toml"
    config.write_text('[http]\nunix_socket = "/run/pymgr/pymgr.sock"\n')

    result = pymgr("service", "install", "--config", str(config), "--prefix", str(prefix))

    assert (secret.read_text(), stat.S_IMODE(secret.stat().st_mode)) == ("root's own\n", 0o600)
    assert not os.path.lexists(unit_dir / "pymgr.service") and not os.path.lexists(unit_dir / "pymgr.socket")
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(
        rf"^error: {re.escape(str(prefix))} \(on the way to {re.escape(str(unit_dir))}\) is owned by uid "
        rf"{WWW_DATA.pw_uid}, who could change what pymgr reads there; run chown root {re.escape(str(prefix))}",  # type: ignore[union-attr]
        result.stderr,
        re.MULTILINE,  # after the warning that the config is under /tmp
    )


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[http]\nsocket_group = "root\\nExecStopPost=/bin/id"\n', "http.socket_group"),
        ('[http]\nunix_socket = "/run/py\\nmgr/pymgr.sock"\n', "http.unix_socket"),
        ('[http]\nunix_socket = "/run/pymgr/a\\nExecStopPost=/bin/id"\n', "http.unix_socket"),
        ('state_dir = "/var/lib/pymgr\\nExecStartPre=/bin/id"\n', "state_dir"),
        ('[service]\nread_write_paths = ["/srv/a\\u0000b"]\n', r"service.read_write_paths\[0\]"),
        ('[service]\nlog_file = "/var/log/p\\rExecStartPre=/bin/id/pymgr.log"\n', "service.log_file"),
        ('[audit]\npath = "/var/log/a\\u0085b/audit.log"\n', "audit.path"),
        ('[service]\noverrides = { PrivateTmp = "yes\\\\" }\n', "service.overrides.PrivateTmp"),
        ('[service]\noverrides = { UMask = "0027\\u0000" }\n', "service.overrides.UMask"),
    ],
)
def test_a_value_never_becomes_a_unit_line_of_its_own(tmp_path: Path, toml: str, key: str) -> None:
    """Was: socket_group's newline wrote ExecStopPost=/bin/id into the socket unit; unix_socket's, a traceback."""
    config = tmp_path / "pymgr.toml"
    config.write_text(toml)
    result = pymgr("service", "install", "--config", str(config), "--dry-run")
    assert "ExecStopPost=" not in result.stdout and "ExecStartPre=" not in result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 6, result.stdout + result.stderr
    assert re.match(
        rf"^error: config {re.escape(str(config))} cannot go into a systemd unit: {key}: must not ",
        result.stderr,
    )
    assert MARKER not in result.stdout


# -- pymgr daemon and its pidfile ---------------------------------------------------------------


class Daemon:
    """`pymgr daemon` commands on a config of tmp_path and the given pidfile."""

    def __init__(self, tmp_path: Path, pidfile: Path) -> None:
        self.config = tmp_path / "pymgr.toml"
        self.config.write_text(BASE_CONFIG)
        self.pidfile = pidfile
        self.log = tmp_path / "pymgr.log"
        self.started: list[int] = []

    def __call__(self, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
        log = ["--log-file", str(self.log)] if command == "start" else []
        result = pymgr(
            "daemon", command, "--config", str(self.config), "--pidfile", str(self.pidfile), *log, *extra
        )
        if command == "start" and (found := re.search(r"pymgr started: pid (\d+)", result.stdout)):
            self.started.append(int(found.group(1)))
        return result

    def kill_started(self) -> None:
        for pid in self.started:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def daemon(tmp_path: Path, open_dir: Path) -> Iterator[Daemon]:
    site = Daemon(tmp_path, open_dir / "run" / "pymgr.pid")
    yield site
    site.kill_started()


def hold_as_www_data(pidfile: Path, body: str) -> subprocess.Popen[str]:
    """A www-data process running ``body`` (fd: the open pidfile), then holding on until killed."""
    assert WWW_DATA is not None
    script = f"import fcntl, os, sys, time\n{body}\nprint('held', flush=True)\ntime.sleep(120)\n"
    holder = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", script, str(pidfile)],
        user=WWW_DATA.pw_uid,
        group=WWW_DATA.pw_gid,
        extra_groups=[],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def end(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.mark.root
@as_root
def test_a_link_planted_as_the_pidfile_is_never_written_or_deleted(daemon: Daemon, open_dir: Path) -> None:
    """Was: start overwrote the root-only file the link pointed at with its pid."""
    victim = root_only_file(open_dir / "victim")
    daemon.pidfile.parent.mkdir()
    give_to_www_data(daemon.pidfile.parent)
    as_www_data("ln", "-s", str(victim), str(daemon.pidfile))

    started = daemon("start")
    stopped = daemon("stop")
    status = daemon("status")

    assert (victim.read_text(), stat.S_IMODE(victim.stat().st_mode)) == ("root's own\n", 0o600)
    assert daemon.started == [] and started.returncode == 1
    owner = f"is owned by uid {WWW_DATA.pw_uid}, who could change what pymgr reads there"  # type: ignore[union-attr]
    assert started.stderr.startswith(
        f"not trusting pidfile {daemon.pidfile}: {daemon.pidfile.parent} {owner}"
    )
    assert stopped.returncode == 1 and stopped.stderr.startswith(f"not trusting pidfile {daemon.pidfile}:")
    assert status.returncode == 4 and status.stdout.startswith(f"not trusting pidfile {daemon.pidfile}:")


@pytest.mark.root
@as_root
def test_a_pidfile_www_data_locked_naming_a_root_process_is_never_signalled(daemon: Daemon) -> None:
    """Was: status said "pymgr is running (pid of root's sleep)" and stop killed that process."""
    daemon.pidfile.parent.mkdir()
    give_to_www_data(daemon.pidfile.parent)
    with subprocess.Popen(["sleep", "120"]) as bystander:
        holder = hold_as_www_data(
            daemon.pidfile,
            f"fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\nos.write(fd, b'{bystander.pid}\\n')\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)",
        )
        try:
            status, stopped = daemon("status"), daemon("stop", "--timeout", "2")
            assert pid_alive(bystander.pid), "stop killed root's bystander"
        finally:
            end(holder)
            bystander.kill()
    assert (status.returncode, stopped.returncode) == (4, 1), status.stdout + stopped.stderr
    assert f"(pid {bystander.pid}" not in status.stdout


@pytest.mark.root
@as_root
def test_a_read_lock_www_data_holds_on_a_stale_pidfile_does_not_block_start(daemon: Daemon) -> None:
    """Was: "pymgr did not start: pidfile ... is locked by pid N: pymgr is already running", N long dead."""
    daemon.pidfile.parent.mkdir()
    daemon.pidfile.write_text(
        f"{dead_pid()}\n"
    )  # a crashed daemon's, readable by all as older versions left it
    daemon.pidfile.chmod(0o644)
    holder = hold_as_www_data(
        daemon.pidfile, "fd = os.open(sys.argv[1], os.O_RDONLY)\nfcntl.lockf(fd, fcntl.LOCK_SH)"
    )
    try:
        started = daemon("start")
        assert started.returncode == 0, started.stderr
        status = daemon("status")
        assert (status.returncode, status.stdout.strip()) == (
            0,
            f"pymgr is running (pid {daemon.started[0]}, pidfile {daemon.pidfile})",
        )
        assert stat.S_IMODE(daemon.pidfile.stat().st_mode) == 0o600  # nobody else can open (and lock) it now
        stopped = daemon("stop")
        assert stopped.returncode == 0 and stopped.stdout.startswith(
            f"stopped pymgr (pid {daemon.started[0]})"
        )
    finally:
        end(holder)
    assert not daemon.pidfile.exists()


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
