"""``pymgr serve``: the daemon in the foreground, the way a service manager runs it.

Under systemd (``Type=notify``) it reports ``READY=1`` once every listener
is bound, ``STATUS=`` lines, ``STOPPING=1`` when shutdown begins, and pings
the watchdog; it serves the sockets systemd passed (socket activation). In a
container or a terminal the same code runs, and those steps are no-ops.

Rules:
- SIGHUP is ignored from the start until the daemon is ready (its default
  action would kill the daemon), reloads the config from then on
  (``reload.Reloader``), and is ignored again once shutdown begins.
- Start-up errors (config, activation, binding) are logged as one
  ``cannot start`` line, shown in ``systemctl status`` through ``STATUS=``,
  and end the process with exit code 78 (EX_CONFIG).
- The classic daemon (``unixd``) runs the daemon through ``run_service``
  too, with callbacks that report readiness or failure to ``pymgr daemon
  start`` waiting in the foreground.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from pymgr import daemon
from pymgr.config import Config, ConfigError, load_config
from pymgr.service import activation
from pymgr.service.hooks import Runtime, ServiceHooks
from pymgr.service.logsetup import LogFormat, setup_logging
from pymgr.service.reload import Reloader
from pymgr.service.sdnotify import Notifier, ping_watchdog, watchdog_interval_s
from pymgr.tasks._spawn import reset_inherited_signals


log = logging.getLogger("pymgr")

EXIT_CONFIG = daemon.EXIT_CONFIG


class ForegroundHooks(ServiceHooks):
    """sd_notify, the watchdog, SIGHUP reload, and an optional readiness callback."""

    def __init__(
        self,
        config_path: Path,
        notifier: Notifier,
        inherited: Mapping[str, list] | None = None,
        watchdog_s: float | None = None,
        on_ready: Callable[[Runtime], None] | None = None,
    ) -> None:
        self.config_path = config_path
        self.notifier = notifier
        self.inherited = dict(inherited or {})
        self.watchdog_s = watchdog_s
        self.on_ready = on_ready
        self.reloader: Reloader | None = None
        self._watchdog: asyncio.Task[None] | None = None

    def ready(self, runtime: Runtime) -> None:
        loop = asyncio.get_running_loop()
        self.reloader = Reloader(self.config_path, runtime, self.notifier)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        if self.watchdog_s is not None:
            # Kept here until the loop closes: asyncio.Runner cancels it then.
            self._watchdog = loop.create_task(ping_watchdog(self.notifier, self.watchdog_s), name="sd-watchdog")
        self.notifier.ready(_status_line(runtime))
        if self.on_ready is not None:
            self.on_ready(runtime)

    def stopping(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP ignored: the daemon is shutting down")
        self.notifier.stopping("stopping: finishing in-flight requests, then tasks")

    def _on_sighup(self) -> None:
        if self.reloader is None:  # pragma: no cover - installed together with the reloader
            return
        try:
            self.reloader.reload()
        except Exception:  # a bug in a reload step; the daemon must stay up
            log.exception("reload failed inside pymgr; this is a bug. The daemon keeps running")


def _status_line(runtime: Runtime) -> str:
    parts = [", ".join(runtime.listeners.get("http", []))]
    if "legacy" in runtime.listeners:
        parts.append(f"legacy {runtime.listeners['legacy']}")
    return "serving " + "; ".join(parts)


def serve(
    config_path: Path, log_level: str | None = None, log_format: LogFormat = "text", log_file: Path | None = None
) -> int:
    """``pymgr serve``: run in the foreground until SIGTERM/SIGINT; the exit code."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"pymgr: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        setup_logging(log_level or config.log_level, log_format, log_file)
    except OSError as exc:
        print(f"pymgr: cannot open log file {log_file}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    return run_service(config_path, config)


def run_service(
    config_path: Path,
    config: Config,
    *,
    on_ready: Callable[[Runtime], None] | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> int:
    """Run the daemon with sd_notify, socket activation and SIGHUP reload; the exit code.

    Args:
        config_path: the file SIGHUP reads again.
        config: that file, loaded.
        on_ready: called once every listener serves.
        on_failure: called with the reason when start-up fails.
    """
    # Commands are spawned by this process: what nohup or tmux made it ignore must not reach them.
    reset = reset_inherited_signals()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the reloader is wired, in ready()
    if reset:
        log.info("reset inherited signal dispositions (commands start from the defaults): %s", ", ".join(reset))
    notifier = Notifier.from_env()
    watchdog_s = watchdog_interval_s()
    try:
        inherited = activation.listen_fds()
        activation.check_against(config, inherited)
    except activation.ActivationError as exc:
        return _failed(str(exc), notifier, on_failure)
    hooks = ForegroundHooks(config_path, notifier, inherited, watchdog_s, on_ready)
    try:
        with daemon.event_loop_runner() as runner:
            runner.run(daemon.run(config, hooks=hooks))
    except daemon.StartupError as exc:
        return _failed(str(exc), notifier, on_failure)
    finally:
        activation.close_all(inherited)
        notifier.close()
    return 0


def _failed(reason: str, notifier: Notifier, on_failure: Callable[[str], None] | None) -> int:
    log.error("cannot start: %s", reason)
    notifier.status(f"cannot start: {reason}")
    if on_failure is not None:
        on_failure(reason)
    return EXIT_CONFIG
