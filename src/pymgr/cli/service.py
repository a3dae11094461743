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


ConsoleOpt = Annotated[
    bool,
    typer.Option(
        "--console", help="Also write NAME-console.service: the web console as its own unprivileged unit."
    ),
]
ConsoleConfigOpt = Annotated[
    Path,
    typer.Option(
        "--console-config", metavar="FILE", dir_okay=False, help="The console's TOML config (with --console)."
    ),
]
#: Where `install --console` looks for the console's config when --console-config is not given.
DEFAULT_CONSOLE_CONFIG = Path("/etc/pymgr/console.toml")


@service_app.command("install")
def service_install(
    config: ConfigOpt = DEFAULT_CONFIG,
    dry_run: DryRunOpt = False,
    prefix: PrefixOpt = None,
    unit_name: UnitNameOpt = "pymgr",
    console: ConsoleOpt = False,
    console_config: ConsoleConfigOpt = DEFAULT_CONSOLE_CONFIG,
) -> None:
    """Write pymgr.service and pymgr.socket (then daemon-reload and enable them), or install the Windows service.

    With --console, pymgr-console.service too: the web console, after the daemon, as its own user.
    """
    config = config.absolute()
    if console and _platform() == "win32":
        _done(2, "error: --console writes a systemd unit; on Windows run pymgr console yourself")
    _on_windows("install", unit_name, config)
    systemd = _systemd()
    name = _unit(unit_name)
    units = _render(config, name, console_config.absolute() if console else None)
    directory = systemd.unit_dir(prefix)
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


def _render(config: Path, name: str, console_config: Path | None) -> list[Any]:
    """The units to write (exit 6 on a config that is invalid or cannot go into a unit); prints warnings."""
    from pymgr.config import ConfigError, load_config
    from pymgr.service._unitsyntax import UnitValueError
    from pymgr.service.systemd_units import placement_warnings, render_units

    try:
        loaded = load_config(config)
        units = render_units(loaded, config, name)
    except ConfigError as exc:
        _done(6, f"error: {exc}")
    except UnitValueError as exc:
        _done(6, f"error: config {config} cannot go into a systemd unit: {exc}")
    warnings = placement_warnings(config)
    if console_config is not None:
        from pymgr.console.config import ConsoleConfigError
        from pymgr.console.config import load_config as load_console_config
        from pymgr.service.console_unit import console_warnings, render_console_unit

        try:
            console = load_console_config(console_config)
            units.append(render_console_unit(loaded, console, console_config, name))
        except ConsoleConfigError as exc:
            _done(6, f"error: {exc}")
        except UnitValueError as exc:
            _done(6, f"error: console config {console_config} cannot go into a systemd unit: {exc}")
        warnings += placement_warnings(console_config) + console_warnings(loaded, console)
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    return units


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
    """Stop and disable the units (the console's too), then delete them (only files pymgr wrote).

    On Windows, remove the Windows service.
    """
    _on_windows("remove", unit_name)
    systemd = _systemd()
    name = _unit(unit_name)
    directory = systemd.unit_dir(prefix)
    units = [unit for unit in _unit_files(name) if (directory / unit).exists()]
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


def _unit_files(name: str) -> list[str]:
    """The files a service of this name may have, in start order: socket, daemon, console."""
    from pymgr.service.console_unit import console_unit_name

    return [f"{name}.socket", f"{name}.service", f"{console_unit_name(name)}.service"]


def _installed_units(name: str) -> list[str]:
    """The units to start or stop together: the socket and the console too, if pymgr installed them."""
    directory = _systemd().unit_dir(None)
    service = f"{name}.service"
    return [unit for unit in _unit_files(name) if unit == service or (directory / unit).exists()]


@service_app.command("start")
def service_start(unit_name: UnitNameOpt = "pymgr") -> None:
    """Start the service (systemctl start, its socket and console too)."""
    _control("start", unit_name, lambda name: ["start", *_installed_units(name)])


@service_app.command("stop")
def service_stop(unit_name: UnitNameOpt = "pymgr") -> None:
    """Stop the service, its console and its socket (else the next connection would start it again)."""
    _control("stop", unit_name, lambda name: ["stop", *_installed_units(name)])


@service_app.command("restart")
def service_restart(unit_name: UnitNameOpt = "pymgr") -> None:
    """Restart the daemon; the socket stays open, so clients' connections wait instead of failing."""
    _control("restart", unit_name, lambda name: ["restart", f"{name}.service"])


@service_app.command("status")
def service_status(unit_name: UnitNameOpt = "pymgr") -> None:
    """Show the status of the service, its socket and console (exit 0 running, 3 not running)."""
    _control("status", unit_name, lambda name: ["status", "--no-pager", *_installed_units(name)], 4)


@service_app.command("reload")
def service_reload(unit_name: UnitNameOpt = "pymgr") -> None:
    """Reload the config (SIGHUP through systemctl reload); the journal says what changed."""
    if _platform() == "win32":
        _done(3, "reload is not available for the Windows service; use pymgr service restart")
    _control("reload", unit_name, lambda name: ["reload", f"{name}.service"])
