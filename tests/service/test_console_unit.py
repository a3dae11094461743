"""The web console's systemd unit (`pymgr service install --console`): what it says, and that systemd accepts it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pymgr.config import load_config
from pymgr.console.config import load_config as load_console_config
from pymgr.service import systemd
from pymgr.service._unitsyntax import UnitValueError
from pymgr.service.console_unit import render_console_unit
from pymgr.service.systemd_units import MARKER
from tests.service.helpers import pymgr

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)"
)

DAEMON = """
state_dir = "/var/lib/pymgr"
[http]
unix_socket = "/run/pymgr/pymgr.sock"
socket_mode = "0660"
socket_group = "pymgr"
"""
CONSOLE = """
[console]
socket = "/run/pymgr/pymgr.sock"
users_file = "/var/lib/pymgr-console/users.json"
trusted_proxies = ["127.0.0.1"]
"""
USER = 'user = "pymgr-console"\n'


def _configs(tmp_path: Path, console: str = CONSOLE + USER) -> tuple[Path, Path]:
    daemon_path, console_path = tmp_path / "pymgr.toml", tmp_path / "console.toml"
    daemon_path.write_text(DAEMON)
    console_path.write_text(console)
    return daemon_path, console_path


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            name, value = line.split("=", 1)
            found.setdefault(name, []).append(value)
    return found


def _render(tmp_path: Path, console: str = CONSOLE + USER) -> str:
    daemon_path, console_path = _configs(tmp_path, console)
    unit = render_console_unit(load_config(daemon_path), load_console_config(console_path), console_path)
    assert unit.name == "pymgr-console.service"
    return unit.text


def test_the_console_runs_as_its_user_in_the_sockets_group_after_the_daemon(tmp_path: Path) -> None:
    text = _render(tmp_path)
    assert text.startswith(f"{MARKER} (pymgr ")
    d = _directives(text)
    assert d["Wants"] == ["pymgr.service"] and d["After"] == ["pymgr.service network.target"]
    assert d["User"] == ["pymgr-console"] and d["SupplementaryGroups"] == ["pymgr"]
    assert d["ExecStart"][0].endswith(f"-m pymgr console --config {tmp_path / 'console.toml'}")
    assert d["StateDirectory"] == ["pymgr-console"] and d["StateDirectoryMode"] == ["0700"]
    assert d["ReadWritePaths"] == ["-/var/lib/pymgr-console"]
    assert d["CapabilityBoundingSet"] == [""] and d["AmbientCapabilities"] == [""]
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"] and d["PrivateTmp"] == ["yes"]
    assert "WantedBy=multi-user.target" in text


def test_every_directive_has_a_comment_above_it(tmp_path: Path) -> None:
    lines = _render(tmp_path).splitlines()
    service = lines.index("[Service]")
    for index, line in enumerate(lines[service + 1 :], service + 1):
        if line and not line.startswith(("#", "[")) and lines.index("[Install]") > index:
            assert lines[index - 1].startswith("# "), line


def test_a_console_without_a_user_gets_no_unit(tmp_path: Path) -> None:
    with pytest.raises(UnitValueError, match=r"^console\.user: the console's unit needs the user it runs as"):
        _render(tmp_path, CONSOLE)


def test_a_user_that_would_split_the_directive_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnitValueError, match=r"^console\.user: must not contain spaces"):
        _render(tmp_path, CONSOLE + 'user = "a b"\n')


def test_a_users_file_under_home_gets_protect_home_read_only(tmp_path: Path) -> None:
    text = _render(tmp_path, CONSOLE.replace("/var/lib/pymgr-console", "/home/ops/console") + USER)
    d = _directives(text)
    assert d["ProtectHome"] == ["read-only"] and "StateDirectory" not in d
    assert d["ReadWritePaths"] == ["-/home/ops/console"]


ON_SOCKET = (
    CONSOLE.replace('trusted_proxies = ["127.0.0.1"]', 'trusted_proxies = ["unix"]')
    + USER
    + 'listen = "unix:/run/pymgr-console/console.sock"\nlisten_group = "www-data"\n'
)


def test_a_console_on_a_unix_socket_gets_its_runtime_directory_and_no_ip(tmp_path: Path) -> None:
    d = _directives(_render(tmp_path, ON_SOCKET))
    assert d["RuntimeDirectory"] == ["pymgr-console"] and d["RuntimeDirectoryMode"] == ["0755"]
    assert d["SupplementaryGroups"] == ["pymgr", "www-data"]
    assert d["SystemCallFilter"] == ["@system-service", "~@privileged", "@chown"]  # its socket's chown
    assert d["RestrictAddressFamilies"] == ["AF_UNIX"]
    elsewhere = ON_SOCKET.replace("/run/pymgr-console/", "/srv/console/").replace(
        'listen_group = "www-data"', ""
    )
    d = _directives(_render(tmp_path, elsewhere))
    assert "RuntimeDirectory" not in d and d["ReadWritePaths"] == ["-/var/lib/pymgr-console", "-/srv/console"]
    assert d["SystemCallFilter"] == ["@system-service", "~@privileged"] and d["SupplementaryGroups"] == [
        "pymgr"
    ]


@needs_analyze
@pytest.mark.parametrize("console", [CONSOLE + USER, ON_SOCKET], ids=["tcp", "unix"])
def test_systemd_analyze_verify_accepts_the_console_unit(tmp_path: Path, console: str) -> None:
    (tmp_path / "units").mkdir()
    (tmp_path / "units" / "pymgr-console.service").write_text(_render(tmp_path, console))
    result = subprocess.run(
        [str(ANALYZE), "verify", "./pymgr-console.service"],
        cwd=tmp_path / "units",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_systemd_analyze_security_rates_the_console_unit_ok(tmp_path: Path) -> None:
    """docs/console.md records this score; the daemon's unit, which must keep root's powers, gets about 3."""
    (tmp_path / "units").mkdir()
    (tmp_path / "units" / "pymgr-console.service").write_text(_render(tmp_path))
    result = subprocess.run(
        [str(ANALYZE), "security", "--offline=yes", "./pymgr-console.service"],
        cwd=tmp_path / "units",
        capture_output=True,
        text=True,
        timeout=60,
    )
    score = re.search(r"Overall exposure level for pymgr-console\.service: (\d+\.\d) (\w+)", result.stdout)
    assert score is not None, result.stdout + result.stderr
    assert float(score.group(1)) <= 2.0 and score.group(2) == "OK"


# -- the CLI ------------------------------------------------------------------------------


def test_install_console_writes_it_next_to_the_daemons_units_and_remove_deletes_all(tmp_path: Path) -> None:
    daemon_path, console_path = _configs(tmp_path)
    root = tmp_path / "root"
    args = ("--config", str(daemon_path), "--console", "--console-config", str(console_path))
    installed = pymgr("service", "install", *args, "--prefix", str(root), "--unit-name", "pymgr-a")
    unit_dir = root / "etc/systemd/system"
    assert installed.returncode == 0, installed.stderr
    names = ["pymgr-a.service", "pymgr-a.socket", "pymgr-a-console.service"]
    assert installed.stdout.strip() == "wrote " + ", ".join(str(unit_dir / n) for n in names)
    console = (unit_dir / "pymgr-a-console.service").read_text()
    assert (
        "Wants=pymgr-a.service\n" in console
        and (unit_dir / "pymgr-a-console.service").stat().st_mode & 0o777 == 0o644
    )
    removed = pymgr("service", "remove", "--prefix", str(root), "--unit-name", "pymgr-a")
    assert removed.returncode == 0 and not list(unit_dir.iterdir())


def test_install_console_refuses_a_console_config_it_cannot_use(tmp_path: Path) -> None:
    daemon_path, console_path = _configs(tmp_path, CONSOLE)
    args = ("--config", str(daemon_path), "--console", "--console-config", str(console_path), "--dry-run")
    no_user = pymgr("service", "install", *args)
    assert no_user.returncode == 6
    assert (
        f"error: console config {console_path} cannot go into a systemd unit: console.user:" in no_user.stderr
    )
    console_path.write_text(CONSOLE + USER + "listen = 8765\n")
    invalid = pymgr("service", "install", *args)
    assert invalid.returncode == 6 and re.search(r"error: .*console\.toml: listen: ", invalid.stderr)


def test_install_console_warns_when_the_console_would_miss_the_daemons_socket(tmp_path: Path) -> None:
    daemon_path, console_path = _configs(tmp_path, CONSOLE.replace("/run/pymgr/", "/run/other/") + USER)
    result = pymgr(
        "service",
        "install",
        "--config",
        str(daemon_path),
        "--console",
        "--console-config",
        str(console_path),
        "--dry-run",
    )
    assert result.returncode == 0
    assert "warning: the console's socket (/run/other/pymgr.sock) is not the daemon's" in result.stderr
    assert "# ---- /etc/systemd/system/pymgr-console.service\n" in result.stdout
    assert "believes" not in result.stderr  # no user header: nothing believed from loopback


@pytest.mark.parametrize("trusted", ['["127.0.0.1"]', '["0.0.0.0/0"]', '["10.0.0.0/8", "::1"]'])
def test_install_console_warns_of_a_user_header_believed_from_loopback(tmp_path: Path, trusted: str) -> None:
    console = CONSOLE.replace('["127.0.0.1"]', trusted) + USER + 'proxy_user_header = "X-Remote-User"\n'
    for text, warned in [(console, True), (ON_SOCKET + 'proxy_user_header = "X-Remote-User"\n', False)]:
        daemon_path, console_path = _configs(tmp_path, text)
        args = ["--config", str(daemon_path), "--console", "--console-config", str(console_path)]
        result = pymgr("service", "install", *args, "--dry-run")
        assert result.returncode == 0, result.stderr
        assert ('believes X-Remote-User from any local process: listen = "unix:' in result.stderr) is warned


def test_start_stop_and_status_name_the_console_once_it_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pymgr.cli import service

    monkeypatch.setattr(systemd, "unit_dir", lambda prefix: tmp_path)
    assert service._installed_units("pymgr") == ["pymgr.service"]
    (tmp_path / "pymgr.socket").write_text(MARKER)
    (tmp_path / "pymgr-console.service").write_text(MARKER)
    assert service._installed_units("pymgr") == ["pymgr.socket", "pymgr.service", "pymgr-console.service"]
