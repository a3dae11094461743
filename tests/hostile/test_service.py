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
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymgr.service.systemd import MARKER
from tests.service.helpers import pymgr

try:
    WWW_DATA: pwd.struct_passwd | None = pwd.getpwnam("www-data")
except KeyError:
    WWW_DATA = None

as_root = pytest.mark.skipif(
    os.geteuid() != 0 or WWW_DATA is None, reason="replays what www-data does to root's files: needs root and www-data"
)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A temp directory every user can reach (tmp_path's parents are root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="pymgr-hostile-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


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
def test_a_link_planted_in_a_prefix_www_data_owns_is_never_written_through(shared: Path, tmp_path: Path) -> None:
    """Was: the unit text went into the root-only file, which became 0644, and the unit became www-data's link."""
    secret = root_only_file(shared / "secret")
    prefix = shared / "prefix"
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
        rf"^error: config {re.escape(str(config))} cannot go into a systemd unit: {key}: must not ", result.stderr
    )
    assert MARKER not in result.stdout
