"""``pymgr service install|remove|start|stop|restart|status|reload``: pymgr as a system service.

On Linux these write the systemd units (``pymgr.service.systemd``) and call
systemctl; on Windows the same commands install and control a Windows
service (``pymgr.service.winservice``, pywin32 in ``pymgr.service.windows``).

Exit codes: 0 done; 1 failed (the message says why: systemd not running, a
foreign unit file or a symlink in the way, a unit directory
another user could change, the SCM refused); 2 bad arguments; 4 no
privilege to write the units; 6 the config is invalid (or holds a value
that cannot go into a unit). start, stop,
restart, status and reload on systemd pass systemctl's own exit code
through (``status``: 0 running, 3 not running, as LSB).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from pymgr.cli.daemondeps import no_daemon_message

service_app = typer.Typer(
    help="Install and control pymgr as a system service (systemd units, or a Windows service).",
    no_args_is_help=True,
)

#: Where `install` looks for the config when --config is not given.
DEFAULT_CONFIG = Path("/etc/pymgr/pymgr.toml")

ConfigOpt = Annotated[
    Path,
    typer.Option(
        "--config", metavar="FILE", dir_okay=False, help="The daemon's TOML config (made absolute)."
    ),
]
UnitNameOpt = Annotated[
    str,
    typer.Option(
        "--unit-name", metavar="NAME", help="Unit (or Windows service) name: NAME.service, NAME.socket."
    ),
]
PrefixOpt = Annotated[
    Path | None,
    typer.Option(
        "--prefix", metavar="DIR", help="Write under DIR/etc/systemd/system (packaging); runs no systemctl."
    ),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the unit files; write nothing.")]


def _platform() -> str:
    """sys.platform, through one function so tests can pose as Windows."""
    return sys.platform


def _windows_control() -> Any:
    """The pywin32 ServiceControl (tests replace it with a recording fake)."""
    from pymgr.service.windows import Pywin32Control

    return Pywin32Control()


def _done(code: int, message: str = "") -> NoReturn:
    if message:
        typer.echo(message, err=code != 0)
    raise typer.Exit(code)


def _on_windows(command: str, unit_name: str, config: Path | None = None) -> None:
    """Run ``command`` against the Windows SCM, if this is Windows (then never returns).

    Every service command starts here, so this is also where a light install
    (no ``daemon`` extra) stops with the one line that says what to install.
    """
    missing = no_daemon_message(f"pymgr service {command}")
    if missing is not None:
        _done(1, missing)
    if _platform() != "win32":
        return
    from pymgr.service.winservice import WindowsCommands

    try:
        control = _windows_control()
    except RuntimeError as exc:
        _done(1, f"error: {exc}")
    outcome = WindowsCommands(control, unit_name).run(command, config)
    _done(outcome.code, outcome.message)


def _systemd() -> Any:
    from pymgr.service import systemd

    return systemd


def _unit(name: str) -> str:
    from pymgr.service.systemd_units import check_unit_name

    try:
        return check_unit_name(name)
    except ValueError as exc:
        _done(2, f"error: --unit-name: {exc}")


@service_app.command("install")
def service_install(
    config: ConfigOpt = DEFAULT_CONFIG,
    dry_run: DryRunOpt = False,
    prefix: PrefixOpt = None,
    unit_name: UnitNameOpt = "pymgr",
) -> None:
    """Write pymgr.service and pymgr.socket (then daemon-reload and enable them), or install the Windows service."""
    config = config.absolute()
    _on_windows("install", unit_name, config)
    from pymgr.config import ConfigError, load_config

    systemd = _systemd()
    name = _unit(unit_name)
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        _done(6, f"error: {exc}")
    from pymgr.service._unitsyntax import UnitValueError
    from pymgr.service.systemd_units import placement_warnings, render_units

    try:
        units = render_units(loaded, config, name)
    except UnitValueError as exc:
        _done(6, f"error: config {config} cannot go into a systemd unit: {exc}")
    directory = systemd.unit_dir(prefix)
    for warning in placement_warnings(config):
        typer.echo(f"warning: {warning}", err=True)
    if dry_run:
        for unit in units:
            typer.echo(f"# ---- {directory / unit.name}\n{unit.text}")
        _done(0)
    from pymgr._fsguard import UnsafePathError

    try:
        paths = systemd.write_units(units, directory)
    except (systemd.UnitConflict, UnsafePathError) as exc:
        _done(1, f"error: {exc}")
    except PermissionError as exc:
        _done(4, f"error: cannot write {exc.filename}: {exc.strerror} (run as root, or use --prefix DIR)")
    typer.echo("wrote " + ", ".join(map(str, paths)))
    if prefix is not None:
        _done(0)
    _activate(systemd, [unit.name for unit in units])


def _activate(systemd: Any, names: list[str]) -> NoReturn:
    if not systemd.systemd_running():
        _done(
            0,
            "systemd is not running on this host (not PID 1), so nothing was enabled; on a systemd host run: "
            f"systemctl daemon-reload && systemctl enable --now {' '.join(names)}",
        )
    code = systemd.systemctl("daemon-reload") or systemd.systemctl("enable", *names)
    if code == 0:
        typer.echo(f"enabled {' '.join(names)}; start it now with: pymgr service start")
    _done(code)


@service_app.command("remove")
def service_remove(prefix: PrefixOpt = None, unit_name: UnitNameOpt = "pymgr") -> None:
    """Stop and disable the units, then delete them (only files pymgr wrote), or remove the Windows service."""
    _on_windows("remove", unit_name)
    systemd = _systemd()
    name = _unit(unit_name)
    directory = systemd.unit_dir(prefix)
    units = [f"{name}.{kind}" for kind in ("socket", "service") if (directory / f"{name}.{kind}").exists()]
    if prefix is None and units and systemd.systemd_running():
        systemd.systemctl("disable", "--now", *units)
    from pymgr._fsguard import UnsafePathError

    try:
        removed = systemd.remove_units(name, directory)
    except (systemd.UnitConflict, UnsafePathError) as exc:
        _done(1, f"error: {exc}")
    except PermissionError as exc:
        _done(4, f"error: cannot delete {exc.filename}: {exc.strerror} (run as root)")
    if prefix is None and removed and systemd.systemd_running():
        systemd.systemctl("daemon-reload")
    _done(
        0,
        "removed " + ", ".join(map(str, removed))
        if removed
        else f"no {name} units in {directory}; nothing to remove",
    )


def _control(
    command: str, unit_name: str, args: Callable[[str], list[str]], unavailable_code: int = 1
) -> NoReturn:
    """Run systemctl with ``args(unit name)``, or the Windows command; exits with its code."""
    _on_windows(command, unit_name)
    systemd = _systemd()
    name = _unit(unit_name)
    try:
        _done(systemd.systemctl(*args(name)))
    except systemd.SystemdUnavailable as exc:
        _done(unavailable_code, f"error: {exc}")


def _with_socket(name: str) -> list[str]:
    """The units to start or stop together: the socket too, if pymgr installed one."""
    socket = _systemd().unit_dir(None) / f"{name}.socket"
    return [f"{name}.socket", f"{name}.service"] if socket.exists() else [f"{name}.service"]


@service_app.command("start")
def service_start(unit_name: UnitNameOpt = "pymgr") -> None:
    """Start the service (systemctl start, its socket too)."""
    _control("start", unit_name, lambda name: ["start", *_with_socket(name)])


@service_app.command("stop")
def service_stop(unit_name: UnitNameOpt = "pymgr") -> None:
    """Stop the service and its socket (else the next connection would start it again)."""
    _control("stop", unit_name, lambda name: ["stop", *_with_socket(name)])


@service_app.command("restart")
def service_restart(unit_name: UnitNameOpt = "pymgr") -> None:
    """Restart the daemon; the socket stays open, so clients' connections wait instead of failing."""
    _control("restart", unit_name, lambda name: ["restart", f"{name}.service"])


@service_app.command("status")
def service_status(unit_name: UnitNameOpt = "pymgr") -> None:
    """Show the service's status (exit 0 running, 3 not running)."""
    _control("status", unit_name, lambda name: ["status", "--no-pager", *_with_socket(name)], 4)


@service_app.command("reload")
def service_reload(unit_name: UnitNameOpt = "pymgr") -> None:
    """Reload the config (SIGHUP through systemctl reload); the journal says what changed."""
    if _platform() == "win32":
        _done(3, "reload is not available for the Windows service; use pymgr service restart")
    _control("reload", unit_name, lambda name: ["reload", f"{name}.service"])
