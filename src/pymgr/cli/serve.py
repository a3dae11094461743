"""``pymgr serve`` without the CLI stack: its options, defined once, and a lean entry.

The daemon needs none of typer, click's help machinery, rich or httpx
(``pymgr.client``), which together cost 8-10 MiB of idle RSS and 0.2-0.3 s
of start-up (docs/performance.md, "Daemon footprint"). ``pymgr.cli.main``
therefore hands ``serve`` to ``lean_serve`` before it imports typer.

Rules:
- ``SERVE_OPTIONS`` is the one definition of the serve options' flags,
  metavars and help; the typer command in ``app.py`` builds its options
  from it, and a test checks the two stay the same.
- ``lean_serve`` handles only a command line it is sure of: ``serve``
  first, known options given once each with valid values, no ``--help``.
  Anything else (help, a usage error, a global option before ``serve``)
  returns ``None`` and goes to the typer app, so help text, error messages
  and exit codes stay exactly typer's.
- This module imports the standard library only; the daemon is imported
  when it runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pymgr.cli.daemondeps import no_daemon_message

#: The daemon's dependencies are missing (the light install): the same code as a daemon error reply.
EXIT_NO_DAEMON = 1

#: ``--log-format`` values.
LOG_FORMATS = ("text", "json")

SERVE_HELP = "Run the daemon in the foreground (systemd Type=notify, containers, development)."


@dataclass(frozen=True)
class ServeOption:
    """One ``pymgr serve`` option as both parsers see it."""

    flag: str
    dest: str
    metavar: str | None
    help: str


SERVE_OPTIONS = {
    o.dest: o
    for o in (
        ServeOption("--config", "config", "FILE", "The daemon's TOML config."),
        ServeOption("--log-level", "log_level", "LEVEL", "debug, info, warning or error."),
        ServeOption("--log-format", "log_format", None, "text, or json (one object per line)."),
        ServeOption("--log-file", "log_file", "PATH", "Log here, not to stderr."),
    )
}


class _NotMine(Exception):
    """The command line is not one ``lean_serve`` is sure of: typer takes it."""


def _options(args: Sequence[str]) -> dict[str, list[str]]:
    """``--flag VALUE`` and ``--flag=VALUE`` pairs by dest; anything else raises ``_NotMine``.

    A hand-written loop, not argparse: argparse is the daemon's only user of
    it, and importing it costs 0.33 MiB of the idle daemon's RSS (measured:
    VmRSS before/after ``import argparse`` with the daemon's modules loaded).
    It accepts what ``argparse`` with ``allow_abbrev=False`` accepted and
    ``_one`` then let through; everything else goes to typer, as before.
    """
    flags = {option.flag: option.dest for option in SERVE_OPTIONS.values()}
    values: dict[str, list[str]] = {}
    at = 0
    while at < len(args):
        flag, eq, value = args[at].partition("=")
        if flag not in flags:
            raise _NotMine(f"{args[at]!r} is not a serve option")
        if not eq:
            at += 1
            if at == len(args) or args[at].startswith("-"):
                raise _NotMine(f"{flag} needs a value")
            value = args[at]
        values.setdefault(flags[flag], []).append(value)
        at += 1
    return values


def _one(values: list[str] | None, required: bool = False) -> str | None:
    if values is None:
        if required:
            raise _NotMine("missing option")
        return None
    if len(values) != 1 or values[0].startswith("-"):
        raise _NotMine("an option given twice, or a value that looks like an option")
    return values[0]


def parse_serve(argv: Sequence[str]) -> tuple[Path, str | None, str, Path | None] | None:
    """``(config, log_level, log_format, log_file)`` for a plain ``serve`` command line, else ``None``."""
    if not argv or argv[0] != "serve":
        return None
    try:
        args = _options(argv[1:])
        config = Path(_one(args.get("config"), required=True))  # type: ignore[arg-type]
        log_level = _one(args.get("log_level"))
        log_format = _one(args.get("log_format")) or LOG_FORMATS[0]
        log_file = _one(args.get("log_file"))
    except _NotMine:
        return None
    # typer checks these (click.Path exists/dir_okay/readable, a Choice); its messages win.
    if not config.is_file() or not os.access(config, os.R_OK) or log_format not in LOG_FORMATS:
        return None
    if log_file is not None and Path(log_file).is_dir():
        return None
    return config, log_level, log_format, None if log_file is None else Path(log_file)


def run_serve(config: Path, log_level: str | None, log_format: str, log_file: Path | None) -> int:
    """Run the daemon in the foreground; its exit code."""
    missing = no_daemon_message("pymgr serve")
    if missing is not None:
        print(missing, file=sys.stderr)
        return EXIT_NO_DAEMON
    from pymgr.service.foreground import serve as serve_daemon

    return serve_daemon(config, log_level, log_format, log_file)  # type: ignore[arg-type]


def lean_serve(argv: Sequence[str]) -> int | None:
    """Run ``pymgr serve`` without typer; ``None`` when typer must handle this command line."""
    parsed = parse_serve(argv)
    if parsed is None:
        return None
    return run_serve(*parsed)
