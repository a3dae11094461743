"""The daemon's log output: text or JSON lines, to stderr or a file.

Rules:
- Every time stamp is UTC, ISO 8601 to the millisecond
  (``2024-05-01T12:00:00.123+00:00``), as in task records and the audit log,
  whatever the host's time zone: lines from hosts in several zones sort and
  compare as they are.
- ``text`` is ``TIME LEVEL LOGGER: MESSAGE``. When stderr is connected to
  the journal (``$JOURNAL_STREAM`` names stderr's device and inode, see
  systemd.exec(5)), the time is left out (journald stamps every line) and
  each line starts with the ``<N>`` syslog priority prefix sd-daemon(3)
  defines, so ``journalctl -p warning`` filters by level.
- ``json`` is one object per line: ``time`` (UTC, ISO 8601, ms), ``level``,
  ``logger``, ``message``, ``pid``, ``exc`` (the traceback) when there is
  one, and every field the call passed with ``extra=`` under its own name
  (a value JSON cannot hold is written as its ``str``). Hand-written: the formatter is a dozen lines, and the daemon's core
  dependencies stay few (python-json-logger would do the same).
- A log file is opened with ``WatchedFileHandler``: after logrotate moves it,
  the next line goes to a new file at the same path (no copytruncate needed).
  Every open (the first and after each rotation) goes through
  ``_fsguard.open_private``: never through a link, a regular file of the
  daemon's user with one link, mode 0600 whatever the umask; a missing
  directory is created 0700. Its directory may be one a group can write
  (Ubuntu's /var/log is root:syslog 0775): what others plant there is
  refused, not followed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, TextIO

from pymgr._fsguard import absolute, open_private

LogFormat = Literal["text", "json"]
#: The values ``--log-format`` accepts.
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"

#: syslog priorities of the logging levels (sd-daemon(3) prefixes).
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def utc_time(created: float) -> str:
    """A record's time as UTC ISO 8601 to the millisecond."""
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds")


#: The attributes every LogRecord has; any other one came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` with the time in UTC ISO 8601 (logging's default is local time, no zone)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return utc_time(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: the fixed fields, then the ``extra=`` ones."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and name not in entry:
                entry[name] = value
        return json.dumps(entry, ensure_ascii=False, default=str)


class JournalFormatter(logging.Formatter):
    """Text with the ``<N>`` priority prefix journald reads, and no time stamp."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>" + super().format(record).replace("\n", f"\n<{priority}>")


def stderr_is_journal(
    stream: TextIO = sys.stderr, env: dict[str, str] | os._Environ[str] = os.environ
) -> bool:
    """Whether ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM``)."""
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # a closed or fake stream
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def make_handler(
    log_format: LogFormat, log_file: Path | None, stream: TextIO | None = None
) -> logging.Handler:
    """A handler writing ``log_format`` to ``log_file``, or to ``stream`` (stderr).

    Raises:
        ValueError: an unknown format.
        OSError: the log file cannot be opened.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler: logging.Handler
    if log_file is not None:
        # Imported here: logging.handlers pulls in pickle: 0.35-0.5 MiB of the idle
        # daemon's RSS when nothing else imports it (measured: VmRSS around the import).
        handler = _private_file_handler(log_file)
        journal = False
    else:
        stream = stream if stream is not None else sys.stderr
        handler = logging.StreamHandler(stream)
        journal = stderr_is_journal(stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif journal:
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(TextFormatter())
    return handler


#: Mode of a log file: it holds callers, params and errors.
LOG_FILE_MODE = 0o600


def open_log_file(log_file: Path) -> TextIO:
    """``log_file`` opened for appending text (see the module rules).

    Raises:
        OSError: it cannot be opened, or is refused (a link, not a regular file, not ours).
    """
    log_file = absolute(log_file)
    log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = open_private(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_FILE_MODE)
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8")


def _private_file_handler(log_file: Path) -> logging.Handler:
    # Imported here: logging.handlers pulls in pickle: 0.35-0.5 MiB of the idle
    # daemon's RSS when nothing else imports it (measured: VmRSS around the import).
    from logging.handlers import WatchedFileHandler

    class PrivateFileHandler(WatchedFileHandler):
        """``WatchedFileHandler`` whose every open is ``open_log_file``'s."""

        def _open(self) -> TextIO:  # type: ignore[override]
            return open_log_file(Path(self.baseFilename))

    return PrivateFileHandler(log_file, encoding="utf-8")


def setup_logging(level: str, log_format: LogFormat = "text", log_file: Path | None = None) -> None:
    """Route every logger of the process through one handler at ``level``.

    Raises:
        ValueError: an unknown format.
        OSError: the log file cannot be opened.
    """
    logging.basicConfig(level=level.upper(), handlers=[make_handler(log_format, log_file)], force=True)


def set_level(level: str) -> None:
    """Change the root logger's level (a reload does this)."""
    logging.getLogger().setLevel(level.upper())
