"""The pidfile: who holds the lock is the kernel's word, and only a pymgr holder is ever signalled.

Holders are real processes; `pymgr daemon` runs as a real command.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymgr._fsguard import UnsafePathError
from pymgr.service._pidfile import PidFile, PidFileLocked, PidState, probe
from tests.service.helpers import pid_alive, pymgr

#: Open the pidfile as argv[1] says, do BODY, say "held", and keep everything until killed.
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
{body}
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for holder in started:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]


def _hold(
    holders: list[subprocess.Popen[str]], script: Path, pidfile: Path, body: str
) -> subprocess.Popen[str]:
    script.write_text(HOLDER.format(body=body))
    holder = subprocess.Popen([sys.executable, str(script), str(pidfile)], stdout=subprocess.PIPE, text=True)
    holders.append(holder)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def _daemon(command: str, pidfile: Path) -> subprocess.CompletedProcess[str]:
    return pymgr(
        "daemon", command, "--pidfile", str(pidfile), *(["--timeout", "1"] if command == "stop" else [])
    )


def test_a_holder_that_is_not_pymgr_is_named_and_never_signalled(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    pidfile = tmp_path / "pymgr.pid"
    own_pid = "os.write(fd, b'%d\\n' % os.getpid())\nfcntl.lockf(fd, fcntl.LOCK_EX)"
    holder = _hold(holders, tmp_path / "other-tool", pidfile, own_pid)
    found = probe(pidfile)
    assert (found.state, found.pid, found.process) == (PidState.FOREIGN, holder.pid, None)
    assert re.match(rf"^pid {holder.pid} \(.*python .*\), which is not pymgr$", found.detail)
    status, stopped = _daemon("status", pidfile), _daemon("stop", pidfile)
    assert (status.returncode, stopped.returncode) == (4, 1)
    assert re.match(
        rf"^pidfile {re.escape(str(pidfile))} is locked by pid {holder.pid} \(.*\), which is not pymgr; nothing was "
        "signalled. End that process, or give pymgr a pidfile of its own$",
        status.stdout.strip(),
    )
    assert stopped.stderr == status.stdout and pid_alive(holder.pid)
    with pytest.raises(
        PidFileLocked, match=rf"^pidfile .* is locked by pid {holder.pid} \(.*\), which is not pymgr$"
    ):
        PidFile(pidfile).__enter__()


def test_a_pymgr_holder_that_wrote_another_pid_is_not_believed(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    pidfile = tmp_path / "pymgr.pid"
    holder = _hold(
        holders, tmp_path / "pymgr", pidfile, "os.write(fd, b'1\\n')\nfcntl.lockf(fd, fcntl.LOCK_EX)"
    )
    found = probe(pidfile)
    assert found.state is PidState.FOREIGN and found.detail.endswith(", but the file names pid 1")
    assert _daemon("stop", pidfile).returncode == 1 and pid_alive(holder.pid)


def test_readers_of_a_stale_pidfile_do_not_block_a_new_daemon(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    pidfile = tmp_path / "pymgr.pid"
    pidfile.write_text("999999999\n")
    _hold(holders, tmp_path / "reader", pidfile, "fcntl.lockf(fd, fcntl.LOCK_SH)")
    old = pidfile.stat().st_ino
    assert probe(pidfile).state is PidState.STALE  # readers are not daemons
    with PidFile(pidfile):  # after LOCK_RETRY_S, a new file takes the name; the reader keeps the old one
        assert (pidfile.read_text(), pidfile.stat().st_ino != old) == (f"{os.getpid()}\n", True)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert not pidfile.exists()


def test_a_link_or_a_hard_link_is_refused_and_its_target_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep\n")
    pidfile = tmp_path / "run" / "pymgr.pid"
    pidfile.parent.mkdir()
    pidfile.symlink_to(target)
    for act in (lambda: probe(pidfile), lambda: PidFile(pidfile).__enter__()):
        with pytest.raises(UnsafePathError, match=r"pymgr\.pid is a symbolic link; remove it"):
            act()
    stopped = _daemon("stop", pidfile)
    assert stopped.returncode == 1 and stopped.stderr.startswith(
        f"not trusting pidfile {pidfile}: {pidfile} is a"
    )
    pidfile.unlink()
    os.link(target, pidfile)
    with pytest.raises(UnsafePathError, match=r"pymgr\.pid has 2 hard links: another name may point at it"):
        PidFile(pidfile).__enter__()
    assert target.read_text() == "keep\n" and pidfile.is_file()


@pytest.mark.parametrize("mode", [0o777, 0o1777])
def test_a_directory_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run").chmod(mode)
    pidfile = tmp_path / "run" / "pymgr.pid"
    with pytest.raises(UnsafePathError, match=r"/run is writable by every user"):
        PidFile(pidfile).__enter__()
    status = _daemon("status", pidfile)
    assert status.returncode == 4 and status.stdout.startswith(f"not trusting pidfile {pidfile}: ")
    assert not pidfile.exists()


def test_the_pidfile_is_the_owners_alone_whatever_the_umask(tmp_path: Path) -> None:
    pidfile = tmp_path / "run" / "pymgr.pid"
    old = os.umask(0)
    try:
        with PidFile(pidfile):
            assert stat.S_IMODE(pidfile.stat().st_mode) == 0o600
            assert stat.S_IMODE(pidfile.parent.stat().st_mode) == 0o755
        pidfile.write_text("1\n")
        pidfile.chmod(0o644)  # as an older pymgr left it
        with PidFile(pidfile):
            assert stat.S_IMODE(pidfile.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_no_directory_means_no_pidfile(tmp_path: Path) -> None:
    assert probe(tmp_path / "missing" / "pymgr.pid").state is PidState.ABSENT
