"""``pymgr daemon start|stop|restart|status|reload``: pymgr as a classic Unix daemon.

For hosts without systemd (BusyBox or OpenRC appliances, old init scripts).
Detaching is python-daemon's ``DaemonContext`` (PEP 3143: double fork,
setsid, chdir /, umask, every other fd closed, stdio to the log file, no
core dumps), not hand-written.

Rules:
- ``start`` validates the config in the foreground (exit 6 if it is bad),
  then forks; the daemon reports back through a pipe once every listener is
  bound (``ready PID``) or why it failed (``failed CODE REASON``), and
  ``start`` prints that and exits with the matching code. It never reports
  success before the daemon serves.
- The pidfile (``_pidfile``) is locked for the daemon's life: "running" is
  "a pymgr process holds the write lock", and the pid signalled is the
  lock holder's, as the kernel names it. A pidfile nobody holds is stale;
  its pid is only used to explain what happened to it. A lock held by
  anything else, or a pidfile another user could have planted, is reported
  and never acted on.
- ``stop`` sends SIGTERM and waits up to ``stop_timeout_s`` for the lock to
  be released; with ``force`` it then sends SIGKILL. It always says what it
  did. ``reload`` sends SIGHUP (the daemon logs what changed).
- Exit codes are the LSB init-script ones (LSB Core, "Init Script
  Actions"), so an init script can ``exec pymgr daemon "$1"``: ``status``
  0 running, 1 dead with a pidfile left, 3 not running, 4 unknown (the
  pidfile is untrustworthy, unreadable or locked by another program); the others 0
  success (also "already running" for start and "not running" for stop, as
  LSB asks), 1 generic failure, 4 no privilege, 6 not configured, 7 not
  running (``reload``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from pathlib import Path

import psutil

from pymgr._fsguard import UnsafePathError
from pymgr.config import Config, ConfigError, load_config
from pymgr.service._outcome import Lsb, LsbStatus, Outcome
from pymgr.service._pidfile import PidState, PidStatus, probe, read_pid, remove_stale
from pymgr.service.daemonize import DaemonOptions, can_daemonize, child_main
from pymgr.service.logsetup import open_log_file

__all__ = ["DaemonOptions", "Lsb", "LsbStatus", "read_config", "reload", "restart", "start", "status", "stop"]

#: Seconds between checks while waiting for the daemon to exit.
POLL_S = 0.05
#: Seconds to wait for the kernel to reap a SIGKILLed daemon.
KILL_WAIT_S = 5.0
#: Lines of the log shown when a start fails without a reason.
LOG_TAIL_LINES = 10


def _probe(pidfile: Path, code: int = Lsb.GENERIC) -> PidStatus | Outcome:
    """What the pidfile says, or the outcome (with ``code``) that says why it cannot be trusted or read."""
    try:
        return probe(pidfile)
    except UnsafePathError as exc:
        return Outcome(code, f"not trusting pidfile {pidfile}: {exc}")
    except OSError as exc:
        return Outcome(
            code, f"cannot read pidfile {pidfile}: {exc.strerror} (run as root or the daemon's user)"
        )


def _foreign(found: PidStatus, pidfile: Path, code: int = Lsb.GENERIC) -> Outcome:
    return Outcome(
        code,
        f"pidfile {pidfile} is locked by {found.detail}; nothing was signalled. "
        "End that process, or give pymgr a pidfile of its own",
    )


def read_config(config_path: Path) -> Config | Outcome:
    """The config, or the ``NOT_CONFIGURED`` outcome that says what is wrong with it."""
    try:
        return load_config(config_path)
    except ConfigError as exc:
        return Outcome(Lsb.NOT_CONFIGURED, str(exc))


# -- start -------------------------------------------------------------------


def start(config_path: Path, config: Config, opts: DaemonOptions) -> Outcome:
    """Start the daemon detached, and wait until it serves (or says why it cannot)."""
    if not can_daemonize():
        return Outcome(Lsb.NOT_INSTALLED, "pymgr daemon needs python-daemon: pip install 'pymgr[daemon]'")
    found = _probe(opts.pidfile)
    if isinstance(found, Outcome):
        return found
    if found.state is PidState.RUNNING:
        return Outcome(Lsb.SUCCESS, f"pymgr is already running (pid {found.pid}, pidfile {opts.pidfile})")
    if found.state is PidState.FOREIGN:
        return _foreign(found, opts.pidfile)
    try:
        open_log_file(opts.log_file).close()  # refused here, with its reason, rather than in the forked child
    except OSError as exc:
        return Outcome(Lsb.NOT_CONFIGURED, f"cannot open the log file {opts.log_file}: {exc.strerror or exc}")
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:  # pragma: no cover - the daemon's side; the tests see it through the pipe
        child_main(config_path, config, opts, read_end, write_end)
    os.close(write_end)
    os.waitpid(child, 0)  # it exits as soon as it has forked the daemon
    try:
        report = _read_report(read_end, opts.start_timeout_s)
    finally:
        os.close(read_end)
    outcome = _start_outcome(report, opts)
    if found.state is PidState.STALE and outcome.code == Lsb.SUCCESS:
        return Outcome(outcome.code, f"{outcome.message}\n(replaced a stale pidfile: {found.detail})")
    return outcome


def _read_report(fd: int, timeout_s: float) -> str | None:
    """The daemon's report line; "" if it exited without one, None on timeout."""
    deadline = time.monotonic() + timeout_s
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


def _start_outcome(report: str | None, opts: DaemonOptions) -> Outcome:
    if report is None:
        pid = read_pid(opts.pidfile)
        return Outcome(
            Lsb.GENERIC,
            f"pymgr (pid {pid if pid is not None else '?'}) is not ready after {opts.start_timeout_s:g} s; "
            f"it may still be starting: see {opts.log_file} and `pymgr daemon status`",
        )
    word, _, rest = report.partition(" ")
    if word == "ready":
        ready_pid, _, addresses = rest.partition(" ")
        served = ", ".join(json.loads(addresses)) if addresses else "?"
        return Outcome(Lsb.SUCCESS, f"pymgr started: pid {ready_pid}, serving {served}; log {opts.log_file}")
    if word == "failed":
        code, _, reason = rest.partition(" ")
        return Outcome(
            int(code) if code.isdigit() else Lsb.GENERIC,
            f"pymgr did not start: {reason} (log: {opts.log_file})",
        )
    return Outcome(
        Lsb.GENERIC,
        "pymgr exited during start-up without saying why; the end of "
        f"{opts.log_file}:\n{_tail(opts.log_file)}",
    )


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read it: {exc.strerror})"
    return "\n".join(lines[-LOG_TAIL_LINES:])


# -- stop, restart, status, reload ----------------------------------------------


def stop(opts: DaemonOptions, force: bool = False) -> Outcome:
    """SIGTERM the daemon, wait for it to exit; SIGKILL it after the timeout if ``force``."""
    found = _probe(opts.pidfile)
    if isinstance(found, Outcome):
        return found
    if found.state is PidState.ABSENT:
        return Outcome(Lsb.SUCCESS, f"pymgr is not running (no pidfile {opts.pidfile})")
    if found.state is PidState.STALE:
        if (failed := _remove_stale(opts.pidfile)) is not None:
            return failed
        return Outcome(
            Lsb.SUCCESS, f"pymgr is not running; removed its stale pidfile {opts.pidfile} ({found.detail})"
        )
    if found.state is PidState.FOREIGN or found.process is None:
        return _foreign(found, opts.pidfile)
    pid, daemon = found.pid, found.process
    if (denied := _signal(daemon, signal.SIGTERM)) is not None:
        return denied
    started = time.monotonic()
    if _wait_exit(opts.pidfile, opts.stop_timeout_s):
        return Outcome(
            Lsb.SUCCESS,
            f"stopped pymgr (pid {pid}): it exited {time.monotonic() - started:.1f} s after SIGTERM",
        )
    if not force:
        return Outcome(
            Lsb.GENERIC,
            f"pymgr (pid {pid}) is still running {opts.stop_timeout_s:g} s after SIGTERM (requests or task "
            "stops still finishing?); wait, or run `pymgr daemon stop --force` to SIGKILL it",
        )
    if (denied := _signal(daemon, signal.SIGKILL)) is not None:
        return denied
    if not _wait_exit(opts.pidfile, KILL_WAIT_S):
        return Outcome(
            Lsb.GENERIC, f"pymgr (pid {pid}) survived SIGKILL for {KILL_WAIT_S:g} s (stuck in the kernel?)"
        )
    if (failed := _remove_stale(opts.pidfile)) is not None:  # it had no chance to remove it
        return failed
    return Outcome(
        Lsb.SUCCESS,
        f"killed pymgr (pid {pid}) with SIGKILL: it ignored SIGTERM for {opts.stop_timeout_s:g} s",
    )


def _remove_stale(pidfile: Path) -> Outcome | None:
    try:
        remove_stale(pidfile)
    except UnsafePathError as exc:
        return Outcome(Lsb.GENERIC, f"not removing pidfile {pidfile}: {exc}")
    except OSError as exc:
        return Outcome(
            Lsb.NO_PRIVILEGE, f"cannot remove stale pidfile {pidfile}: {exc.strerror} (run as root)"
        )
    return None


def _signal(daemon: psutil.Process, sig: signal.Signals) -> Outcome | None:
    """Signal the daemon as identified by the pidfile's lock (psutil checks its start time: no reused pid)."""
    try:
        daemon.send_signal(sig)
    except psutil.NoSuchProcess:
        return None  # it exited meanwhile: the wait sees it at once
    except psutil.AccessDenied:
        return Outcome(
            Lsb.NO_PRIVILEGE,
            f"not allowed to send {sig.name} to pymgr (pid {daemon.pid}): run as its user or root",
        )
    return None


def _wait_exit(pidfile: Path, timeout_s: float) -> bool:
    """Wait until nobody holds the pidfile's lock; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while _still_held(pidfile):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def _still_held(pidfile: Path) -> bool:
    found = _probe(pidfile)
    return not isinstance(found, Outcome) and found.state in (PidState.RUNNING, PidState.FOREIGN)


def status(opts: DaemonOptions) -> Outcome:
    """The LSB status of the daemon (``LsbStatus``)."""
    found = _probe(opts.pidfile, LsbStatus.UNKNOWN)
    if isinstance(found, Outcome):
        return found
    if found.state is PidState.FOREIGN:
        return _foreign(found, opts.pidfile, LsbStatus.UNKNOWN)
    if found.state is PidState.RUNNING:
        return Outcome(LsbStatus.RUNNING, f"pymgr is running (pid {found.pid}, pidfile {opts.pidfile})")
    if found.state is PidState.STALE:
        return Outcome(
            LsbStatus.DEAD_PIDFILE,
            f"pymgr is not running, but its pidfile {opts.pidfile} remains: {found.detail}",
        )
    return Outcome(LsbStatus.NOT_RUNNING, "pymgr is not running")


def reload(opts: DaemonOptions) -> Outcome:
    """SIGHUP: the daemon reloads its config and logs what changed or why it refused."""
    found = _probe(opts.pidfile)
    if isinstance(found, Outcome):
        return found
    if found.state is PidState.FOREIGN:
        return _foreign(found, opts.pidfile)
    if found.state is not PidState.RUNNING or found.process is None:
        return Outcome(Lsb.NOT_RUNNING, f"pymgr is not running (pidfile {opts.pidfile}); nothing to reload")
    if (denied := _signal(found.process, signal.SIGHUP)) is not None:
        return denied
    return Outcome(
        Lsb.SUCCESS,
        f"sent SIGHUP to pymgr (pid {found.pid}): it reloads its config; {opts.log_file} says what changed",
    )


def restart(config_path: Path, config: Config, opts: DaemonOptions, force: bool = False) -> Outcome:
    """Stop (if running), then start. Tasks survive where ``[tasks] on_shutdown = "leave"``."""
    stopped = stop(opts, force)
    if stopped.code != Lsb.SUCCESS:
        return stopped
    started = start(config_path, config, opts)
    return Outcome(started.code, f"{stopped.message}\n{started.message}")
