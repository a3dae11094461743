"""The systemd units: what they say, that systemd accepts them, and `pymgr service` on a host without systemd."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pymgr._fsguard import UnsafePathError
from pymgr.config import Config, load_config
from pymgr.service import systemd
from pymgr.service._unitsyntax import UnitValueError
from pymgr.service.hardening import OPTIONS, apply_overrides, hardening
from pymgr.service.systemd import UnitConflict, write_units
from pymgr.service.systemd_units import MARKER, check_unit_name, placement_warnings, render_units
from tests.service.helpers import pymgr

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)"
)

CONFIG = """
state_dir = "/var/lib/pymgr"
[http]
unix_socket = "/run/pymgr/pymgr.sock"
socket_mode = "0660"
socket_group = "root"
[tasks]
on_shutdown = "{on_shutdown}"
[service]
hardening = "{hardening}"
"""


def _load(
    tmp_path: Path, on_shutdown: str = "leave", hardening: str = "strict", extra: str = ""
) -> tuple[Config, Path]:
    path = tmp_path / "pymgr.toml"
    path.write_text(CONFIG.format(on_shutdown=on_shutdown, hardening=hardening) + extra)
    return load_config(path), path


def _directives(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith(("#", "[")))


def _analyze_verify(directory: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ANALYZE), "verify", *(f"./{n}" for n in names)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_service_is_type_notify_with_watchdog_and_restart(tmp_path: Path) -> None:
    config, path = _load(tmp_path)
    service, socket = render_units(config, path)
    assert (service.name, socket.name) == ("pymgr.service", "pymgr.socket")
    assert service.text.startswith(f"{MARKER} (pymgr ")
    d = _directives(service.text)
    assert d["Type"] == "notify" and d["NotifyAccess"] == "main"
    assert d["WatchdogSec"] == "30" and d["Restart"] == "on-failure" and d["RestartSec"] == "2"
    assert d["ExecStart"].endswith(f"-m pymgr serve --config {path}")
    assert d["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert d["Requires"] == "pymgr.socket"
    assert d["TimeoutStopSec"] == "30"  # 10 s requests + 5 s grace + 5 s SIGKILL wait + 10 s margin
    assert d["StateDirectory"] == "pymgr" and d["ReadWritePaths"] == "-/var/lib/pymgr -/run/pymgr"
    s = _directives(socket.text)
    assert s == s | {
        "ListenStream": "/run/pymgr/pymgr.sock",
        "FileDescriptorName": "http",
        "SocketMode": "0660",
        "SocketGroup": "root",
        "Service": "pymgr.service",
        "RemoveOnStop": "yes",
    }


def test_a_fleet_members_stop_time_counts_its_jobs_reports(tmp_path: Path) -> None:
    fleet = '[fleet]\nredis_url = "unix:///run/redis.sock"\nstop_report_s = 7\n'
    config, path = _load(tmp_path, extra=fleet + '[[fleet.keys]]\nid = "console"\nkey_file = "console.pub"\n')
    d = _directives(render_units(config, path)[0].text)
    assert d["TimeoutStopSec"] == "37"  # 30 as above, and 7 s for the fleet's jobs to report their end


@pytest.mark.parametrize(("on_shutdown", "mode"), [("leave", "process"), ("stop", "mixed")])
def test_kill_mode_follows_on_shutdown(tmp_path: Path, on_shutdown: str, mode: str) -> None:
    config, path = _load(tmp_path, on_shutdown=on_shutdown)
    text = render_units(config, path)[0].text
    assert _directives(text)["KillMode"] == mode
    assert re.search(rf'# \[tasks\] on_shutdown = "{on_shutdown}":', text)


def test_every_directive_has_a_comment_above_it(tmp_path: Path) -> None:
    config, path = _load(tmp_path)
    for unit in render_units(config, path):
        lines = unit.text.splitlines()
        section = ""
        for index, line in enumerate(lines):
            if line.startswith("["):
                section = line
            elif line and not line.startswith("#") and section in ("[Service]", "[Socket]"):
                assert lines[index - 1].startswith("# "), f"{unit.name}: {line} has no comment"


def test_levels_and_overrides(tmp_path: Path) -> None:
    strict = {name for name, _, _ in hardening("strict", [])}
    relaxed = {name for name, _, _ in hardening("relaxed", [])}
    assert (
        strict == {o.name for o in OPTIONS}
        and relaxed < strict
        and hardening("off", [("k", Path("/x"))]) == []
    )
    assert relaxed == {
        "PrivateTmp",
        "ProtectControlGroups",
        "LockPersonality",
        "RestrictRealtime",
        "SystemCallArchitectures",
    }
    lines = apply_overrides(
        hardening("strict", []), {"ProtectSystem": "full", "SystemCallFilter": "", "CPUQuota": "50%"}
    )
    values = {name: value for name, value, _ in lines}
    assert (
        values["ProtectSystem"] == "full" and "SystemCallFilter" not in values and values["CPUQuota"] == "50%"
    )
    with pytest.raises(ValueError, match=r"^hardening must be one of strict, relaxed, off, not 'loose'$"):
        hardening("loose", [])
    with pytest.raises(
        UnitValueError,
        match=r"^service\.read_write_paths\[0\]: must not contain spaces, quotes or backslashes: "
        r"systemd splits this directive's value there: '/a b'$",
    ):
        hardening("strict", [("service.read_write_paths[0]", Path("/a b"))])


def test_overrides_reach_base_directives_too(tmp_path: Path) -> None:
    config, path = _load(tmp_path, extra='overrides = { KillMode = "control-group", WatchdogSec = "" }\n')
    d = _directives(render_units(config, path)[0].text)
    assert d["KillMode"] == "control-group" and "WatchdogSec" not in d


def test_no_unix_socket_means_no_socket_unit(tmp_path: Path) -> None:
    path = tmp_path / "pymgr.toml"
    path.write_text('[http]\nunix_socket = ""\ntcp = "127.0.0.1:8080"\n[service]\nwatchdog_s = 0\n')
    units = render_units(load_config(path), path, "pymgr-tcp.service")
    assert [u.name for u in units] == ["pymgr-tcp.service"]
    d = _directives(units[0].text)
    assert "Requires" not in d and "WatchdogSec" not in d


def test_exec_start_quotes_what_systemd_would_split(tmp_path: Path) -> None:
    config, path = _load(tmp_path)
    text = render_units(
        config, path, command=["/opt/my app/python", "-m", "pymgr", "--config", "/etc/50%/$x"]
    )[0].text
    assert _directives(text)["ExecStart"] == '"/opt/my app/python" -m pymgr --config /etc/50%%/$$x'


@pytest.mark.parametrize("name", ["", "a b", "x/y", "a" * 201])
def test_unit_names_are_checked(name: str) -> None:
    with pytest.raises(ValueError, match=r"^unit name must be 1-200 of letters, digits and ':_\.-', not "):
        check_unit_name(name)


def test_foreign_unit_files_are_never_overwritten(tmp_path: Path) -> None:
    config, path = _load(tmp_path)
    (tmp_path / "units").mkdir()
    (tmp_path / "units" / "pymgr.socket").write_text("[Socket]\nListenStream=/run/other.sock\n")
    with pytest.raises(
        UnitConflict, match=r"pymgr\.socket exists and was not generated by pymgr; move it away"
    ):
        write_units(render_units(config, path), tmp_path / "units")
    assert not (tmp_path / "units" / "pymgr.service").exists()


@needs_analyze
@pytest.mark.parametrize(
    ("on_shutdown", "level"), [("leave", "strict"), ("stop", "strict"), ("stop", "relaxed"), ("leave", "off")]
)
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path, on_shutdown: str, level: str) -> None:
    config, path = _load(tmp_path, on_shutdown, level)
    units = render_units(config, path)
    write_units(units, tmp_path / "units")
    result = _analyze_verify(tmp_path / "units", [u.name for u in units])
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_systemd_analyze_security_rates_the_strict_unit_ok(tmp_path: Path) -> None:
    """docs/install.md records this score; Debian's supervisor.service gets 9.6 UNSAFE."""
    config, path = _load(tmp_path)
    write_units(render_units(config, path), tmp_path / "units")
    result = subprocess.run(
        [str(ANALYZE), "security", "--offline=yes", "./pymgr.service"],
        cwd=tmp_path / "units",
        capture_output=True,
        text=True,
        timeout=60,
    )
    score = re.search(r"Overall exposure level for pymgr\.service: (\d+\.\d) (\w+)", result.stdout)
    assert score is not None, result.stdout + result.stderr
    assert float(score.group(1)) <= 4.0 and score.group(2) == "OK"


# -- the CLI ------------------------------------------------------------------------------


def test_dry_run_prints_the_units_and_writes_nothing(tmp_path: Path) -> None:
    _, path = _load(tmp_path)
    result = pymgr(
        "service", "install", "--config", str(path), "--dry-run", "--prefix", str(tmp_path / "root")
    )
    assert result.returncode == 0, result.stderr
    unit_dir = tmp_path / "root" / "etc/systemd/system"
    assert result.stdout.startswith(f"# ---- {unit_dir / 'pymgr.service'}\n{MARKER}")
    assert f"# ---- {unit_dir / 'pymgr.socket'}\n" in result.stdout
    assert not (tmp_path / "root").exists()


def test_install_and_remove_under_a_prefix(tmp_path: Path) -> None:
    _, path = _load(tmp_path)
    root = tmp_path / "root"
    installed = pymgr(
        "service", "install", "--config", str(path), "--prefix", str(root), "--unit-name", "pymgr-a"
    )
    unit_dir = root / "etc/systemd/system"
    assert (installed.returncode, installed.stdout.strip()) == (
        0,
        f"wrote {unit_dir / 'pymgr-a.service'}, {unit_dir / 'pymgr-a.socket'}",
    )
    assert (unit_dir / "pymgr-a.service").stat().st_mode & 0o777 == 0o644
    assert "Service=pymgr-a.service" in (unit_dir / "pymgr-a.socket").read_text()
    removed = pymgr("service", "remove", "--prefix", str(root), "--unit-name", "pymgr-a")
    assert removed.returncode == 0 and not list(unit_dir.iterdir())
    again = pymgr("service", "remove", "--prefix", str(root), "--unit-name", "pymgr-a")
    assert (again.returncode, again.stdout.strip()) == (
        0,
        f"no pymgr-a units in {unit_dir}; nothing to remove",
    )


def test_install_refuses_an_invalid_config(tmp_path: Path) -> None:
    path = tmp_path / "pymgr.toml"
    path.write_text("[service]\nwatchdog_s = 1\n")
    result = pymgr("service", "install", "--config", str(path), "--dry-run")
    assert result.returncode == 6
    assert re.search(
        r"service\.watchdog_s: Value error, must be 0 \(off\) or at least 2 seconds, not 1", result.stderr
    )


@pytest.mark.skipif(systemd.systemd_running(), reason="systemd runs here: systemctl would really act")
def test_control_commands_say_plainly_that_systemd_is_not_running() -> None:
    result = pymgr("service", "start")
    assert result.returncode == 1
    assert re.match(
        r"^error: cannot run systemctl start pymgr\.service: systemd is not running on this host \(PID 1 is '.*', "
        r"/run/systemd/system does not exist\)\. Run pymgr in the foreground \(pymgr serve --config FILE\) or as a "
        r"classic daemon \(pymgr daemon start --config FILE\) instead$",
        result.stderr.strip(),
    )
    assert pymgr("service", "status").returncode == 4  # LSB: status unknown


def test_a_pymgr_under_home_gets_protect_home_read_only(tmp_path: Path) -> None:
    config, _ = _load(tmp_path)
    strict = _directives(
        render_units(config, Path("/etc/pymgr/pymgr.toml"), command=["/opt/pymgr/bin/python"])[0].text
    )
    assert strict["ProtectHome"] == "yes"
    text = render_units(
        config, Path("/etc/pymgr/pymgr.toml"), command=["/home/app/venv/bin/python", "-m", "pymgr"]
    )[0].text
    assert _directives(text)["ProtectHome"] == "read-only"
    assert "# read-only, not yes: /home/app/venv/bin/python must stay readable" in text


def test_a_config_under_tmp_is_warned_about() -> None:
    assert placement_warnings(Path("/etc/pymgr/pymgr.toml"), ["/opt/pymgr/bin/python"]) == []
    (warning,) = placement_warnings(Path("/tmp/x/pymgr.toml"), ["/opt/pymgr/bin/python"])
    assert re.match(
        r"^/tmp/x/pymgr\.toml is under /tmp, which PrivateTmp=yes replaces with an empty directory", warning
    )


# -- writing the files ------------------------------------------------------------------------


def test_units_get_their_mode_whatever_the_umask_and_leave_no_temp_file(tmp_path: Path) -> None:
    config, path = _load(tmp_path)
    old = os.umask(0o077)
    try:
        write_units(render_units(config, path), tmp_path / "units")
    finally:
        os.umask(old)
    assert sorted(p.name for p in (tmp_path / "units").iterdir()) == ["pymgr.service", "pymgr.socket"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "units").iterdir()} == {0o644}


def test_a_link_in_place_of_a_unit_is_refused_and_left_alone(tmp_path: Path) -> None:
    config, path = _load(tmp_path)
    units = tmp_path / "units"
    write_units(render_units(config, path), units)
    elsewhere = tmp_path / "elsewhere.service"
    elsewhere.write_text((units / "pymgr.service").read_text())  # even one pymgr wrote
    (units / "pymgr.service").unlink()
    (units / "pymgr.service").symlink_to(elsewhere)
    for act in (
        lambda: write_units(render_units(config, path), units),
        lambda: systemd.remove_units("pymgr", units),
    ):
        with pytest.raises(
            UnitConflict, match=r"pymgr\.service is not a regular file \(Too many levels of symbolic"
        ):
            act()
        assert (units / "pymgr.service").is_symlink() and elsewhere.read_text().startswith(MARKER)


@pytest.mark.parametrize("mode", [0o777, 0o1777])
def test_a_unit_directory_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    config, path = _load(tmp_path)
    units = tmp_path / "units"
    units.mkdir()
    units.chmod(mode)  # sticky or not: others could plant a name before pymgr writes it
    with pytest.raises(UnsafePathError, match=rf"^{re.escape(str(units))} is writable by every user"):
        write_units(render_units(config, path), units)
    assert list(units.iterdir()) == []


def test_the_config_path_is_checked_like_any_value(tmp_path: Path) -> None:
    config, _ = _load(tmp_path)
    with pytest.raises(
        UnitValueError, match=r"^--config: must not contain control characters \(U\+000A at offset 4\)"
    ):
        render_units(config, Path("/etc\n/pymgr.toml"))
