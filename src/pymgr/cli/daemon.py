"""``pymgr daemon start|stop|restart|status|reload``: the classic Unix daemon, LSB exit codes.

The work is in ``pymgr.service.unixd``; this file maps options to it and
prints its one message: on stdout when it succeeded (and always for
``status``), on stderr otherwise. Exit codes are unixd's LSB codes, not the
client commands' ones, so an init script can pass them through.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from pymgr.cli.daemondeps import no_daemon_message

if TYPE_CHECKING:  # imported on use: the config models take a quarter second to import
    from pymgr.config import Config

daemon_app = typer.Typer(
    help="Run pymgr as a classic Unix daemon with a pidfile (hosts without systemd); LSB exit codes.",
    no_args_is_help=True,
)


class LogFormatChoice(str, enum.Enum):
    """``--log-format`` values."""

    text = "text"
    json = "json"


ConfigOpt = Annotated[
    Path | None, typer.Option("--config", metavar="FILE", dir_okay=False, help="The daemon's TOML config.")
]
PidfileOpt = Annotated[
    Path | None,
    typer.Option(
        "--pidfile",
        metavar="PATH",
        help="The pidfile (default: service.pidfile in the config, else /run/pymgr/pymgr.pid).",
    ),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=0.1,
        metavar="SECONDS",
        help="How long to wait (default: service.start_timeout_s or stop_timeout_s).",
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="SIGKILL the daemon if SIGTERM did not end it in time.")
]
LogFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--log-file", metavar="PATH", dir_okay=False, help="Log file (default: <state_dir>/pymgr.log)."
    ),
]
LogFormatOpt = Annotated[
    LogFormatChoice, typer.Option("--log-format", help="text, or json (one object per line).")
]
LogLevelOpt = Annotated[
    str | None, typer.Option("--log-level", metavar="LEVEL", help="debug, info, warning or error.")
]


def _unixd() -> ModuleType:
    """The implementation, imported on use: it needs fcntl, which Windows lacks.

    Every daemon command calls this before it imports anything of the daemon,
    so a light install (no ``daemon`` extra) stops here with one line.
    """
    missing = no_daemon_message("pymgr daemon")
    if missing is not None:
        typer.echo(missing, err=True)
        raise typer.Exit(5)  # LSB: program is not installed
    try:
        from pymgr.service import unixd
    except ModuleNotFoundError as exc:  # pragma: no cover - Windows
        typer.echo(
            f"error: pymgr daemon needs a Unix host ({exc.name} is missing); on Windows use pymgr service",
            err=True,
        )
        raise typer.Exit(3) from None  # LSB: unimplemented feature
    return unixd


def _finish(outcome: Any, always_stdout: bool = False) -> NoReturn:
    ok = outcome.code == 0 or always_stdout
    typer.echo(outcome.message, err=not ok)
    sys.stdout.flush()
    raise typer.Exit(int(outcome.code))


def _load(config_path: Path | None) -> Config | None:
    """The config if one was given; a bad one ends the command with exit 6."""
    if config_path is None:
        return None
    unixd = _unixd()
    from pymgr.config import Config

    loaded = unixd.read_config(config_path)
    if not isinstance(loaded, Config):
        _finish(loaded)
    return loaded


def _load_required(config_path: Path | None) -> tuple[Path, Config]:
    """The config path (absolute) and the config; start needs both."""
    loaded = _load(config_path)
    if config_path is None or loaded is None:
        typer.echo("error: --config FILE is required to start the daemon", err=True)
        raise typer.Exit(_unixd().Lsb.INVALID_ARGS)
    return config_path.absolute(), loaded


def _options(
    config: Config | None,
    pidfile: Path | None,
    timeout_s: float | None = None,
    log_file: Path | None = None,
    log_format: LogFormatChoice = LogFormatChoice.text,
    log_level: str | None = None,
) -> Any:
    unixd = _unixd()
    from pymgr.config import ServiceConfig

    service = config.service if config is not None else ServiceConfig()
    state_dir = config.state_dir if config is not None else Path("/var/lib/pymgr")
    return unixd.DaemonOptions(
        pidfile=(pidfile or service.pidfile).absolute(),
        log_file=(log_file or service.log_file or state_dir / "pymgr.log").absolute(),
        log_format=log_format.value,
        log_level=log_level,
        start_timeout_s=timeout_s or service.start_timeout_s,
        stop_timeout_s=timeout_s or service.stop_timeout_s,
    )


@daemon_app.command("start")
def daemon_start(
    config: ConfigOpt = None,
    pidfile: PidfileOpt = None,
    timeout: TimeoutOpt = None,
    log_file: LogFileOpt = None,
    log_format: LogFormatOpt = LogFormatChoice.text,
    log_level: LogLevelOpt = None,
) -> None:
    """Start the daemon in the background; returns once it serves (exit 0), or says why it cannot."""
    path, loaded = _load_required(config)
    opts = _options(loaded, pidfile, timeout, log_file, log_format, log_level)
    _finish(_unixd().start(path, loaded, opts))


@daemon_app.command("stop")
def daemon_stop(
    config: ConfigOpt = None, pidfile: PidfileOpt = None, timeout: TimeoutOpt = None, force: ForceOpt = False
) -> None:
    """SIGTERM the daemon and wait for it to exit (it finishes requests; tasks per tasks.on_shutdown)."""
    _finish(_unixd().stop(_options(_load(config), pidfile, timeout), force))


@daemon_app.command("restart")
def daemon_restart(
    config: ConfigOpt = None,
    pidfile: PidfileOpt = None,
    timeout: TimeoutOpt = None,
    force: ForceOpt = False,
    log_file: LogFileOpt = None,
    log_format: LogFormatOpt = LogFormatChoice.text,
    log_level: LogLevelOpt = None,
) -> None:
    """Stop the daemon if it runs, then start it."""
    path, loaded = _load_required(config)
    opts = _options(loaded, pidfile, timeout, log_file, log_format, log_level)
    _finish(_unixd().restart(path, loaded, opts, force))


@daemon_app.command("status")
def daemon_status(config: ConfigOpt = None, pidfile: PidfileOpt = None) -> None:
    """Exit 0 if the daemon runs, 3 if not, 1 if it died and left its pidfile (LSB)."""
    _finish(_unixd().status(_options(_load(config), pidfile)), always_stdout=True)


@daemon_app.command("reload")
def daemon_reload(config: ConfigOpt = None, pidfile: PidfileOpt = None) -> None:
    """SIGHUP the daemon: it reloads its config and logs what changed (exit 7 if it is not running)."""
    _finish(_unixd().reload(_options(_load(config), pidfile)))
