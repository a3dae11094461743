"""The forked child of ``pymgr daemon start``: it becomes the daemon, serves, and reports how that went.

Detaching is python-daemon's ``DaemonContext`` (PEP 3143: double fork,
setsid, chdir /, umask, every other fd closed, stdio to the log file, no
core dumps), not hand-written. The child reports through the pipe ``start``
waits on, exactly one line: ``ready PID LISTENERS`` once every listener is
bound, or ``failed CODE REASON``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path

from pymgr._fsguard import UnsafePathError
from pymgr.config import Config
from pymgr.service._outcome import Lsb
from pymgr.service._pidfile import PidFile, PidFileLocked
from pymgr.service.foreground import run_service
from pymgr.service.hooks import Runtime
from pymgr.service.logsetup import LogFormat, open_log_file, setup_logging

try:
    import daemon as python_daemon
except ModuleNotFoundError:  # pragma: no cover - Windows, or installed without its dependencies
    python_daemon = None


def can_daemonize() -> bool:
    """Whether python-daemon is installed (it is a dependency everywhere but Windows)."""
    return python_daemon is not None


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    """Where the daemon's files are and how long to wait for it."""

    pidfile: Path
    log_file: Path
    log_format: LogFormat = "text"
    log_level: str | None = None
    start_timeout_s: float = 30.0
    stop_timeout_s: float = 60.0


def child_main(config_path: Path, config: Config, opts: DaemonOptions, read_end: int, write_end: int) -> None:
    """The forked child: become the daemon, serve, and never return into the CLI."""
    code: int = Lsb.GENERIC
    try:
        os.close(read_end)
        code = _become_daemon(config_path, config, opts, _Reporter(write_end))
    except BaseException:  # the log file is stderr by now: leave the traceback there
        traceback.print_exc()
    finally:
        logging.shutdown()
        os._exit(code)


class _Reporter:
    """The daemon's end of the readiness pipe: one line, then closed."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def send(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (" ".join(line.split()) + "\n").encode("utf-8", "replace"))
        except OSError:  # `start` gave up waiting and closed its end
            pass
        finally:
            os.close(self.fd)
            self.fd = None

    def ready(self, runtime: Runtime) -> None:
        self.send(f"ready {os.getpid()} {json.dumps(runtime.listeners.get('http', []))}")

    def failed(self, reason: str, code: int = Lsb.GENERIC) -> None:
        self.send(f"failed {int(code)} {reason}")


#: Job-control signals are ignored (the daemon has no terminal). SIGHUP too,
#: until the daemon is ready and turns it into "reload"; SIGTERM keeps its
#: default until the event loop takes it over.
_SIGNAL_MAP = {signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None, signal.SIGHUP: None}


def _become_daemon(config_path: Path, config: Config, opts: DaemonOptions, reporter: _Reporter) -> int:
    log_stream = open_log_file(opts.log_file)  # lives as long as the daemon; never through a link
    context = python_daemon.DaemonContext(
        working_directory="/",
        umask=0o022,
        pidfile=PidFile(opts.pidfile),
        files_preserve=[reporter.fd, log_stream],
        stdout=log_stream,
        stderr=log_stream,
        signal_map=_SIGNAL_MAP,
        detach_process=True,
    )
    try:
        context.open()
    except (PidFileLocked, UnsafePathError) as exc:
        reporter.failed(str(exc))
        return Lsb.GENERIC
    except PermissionError as exc:
        reporter.failed(f"cannot create pidfile {opts.pidfile}: {exc.strerror}", Lsb.NO_PRIVILEGE)
        return Lsb.NO_PRIVILEGE
    except OSError as exc:
        reporter.failed(f"cannot become a daemon: {exc}")
        return Lsb.GENERIC
    try:
        setup_logging(opts.log_level or config.log_level, opts.log_format, opts.log_file)
        code = run_service(config_path, config, on_ready=reporter.ready, on_failure=reporter.failed)
    finally:
        context.close()  # removes the pidfile, releases its lock
    return code
