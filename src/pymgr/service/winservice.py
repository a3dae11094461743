"""The Windows service without pywin32: what it runs, and what it tells the SCM when.

``windows.py`` is the thin pywin32 side; everything that can be tested
without Windows is here, behind two small interfaces: ``ServiceHost`` (the
running service reports its state) and ``ServiceControl`` (install, start,
stop, query a service).

Rules:
- The service runs the same core as everywhere: ``pymgr.daemon.run`` on an
  asyncio loop, with its one shutdown path.
- States are reported in this order and never backwards: START_PENDING as
  soon as the SCM starts us; RUNNING only from the daemon's ready hook,
  after every listener is bound; STOP_PENDING as soon as a stop is asked
  for (or the daemon ends on its own); STOPPED last, with the exit code.
  (The 2014 design reported RUNNING before its socket was bound, and could
  not stop cleanly.)
- A stop arrives on the SCM's thread. It only reports STOP_PENDING and sets
  the daemon's stop event with ``loop.call_soon_threadsafe``; a stop that
  arrives before the loop runs is remembered and honoured when it does.
- Windows has no Unix sockets here: the daemon serves ``[http] tcp`` (set
  ``unix_socket = ""``); a config without it is refused at start.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pymgr import daemon
from pymgr.config import Config, ConfigError, load_config
from pymgr.service._outcome import Outcome
from pymgr.service.hooks import Runtime, ServiceHooks
from pymgr.service.logsetup import setup_logging


log = logging.getLogger("pymgr.service")

#: The service's display name in services.msc.
DISPLAY_NAME = "pymgr task daemon"
DESCRIPTION = "pymgr: runs named actions and background tasks for web applications."

#: Exit code of a service that could not start (EX_CONFIG, as on Unix).
EXIT_CONFIG = daemon.EXIT_CONFIG
#: Seconds between state queries while a command waits for the service.
POLL_S = 0.25


class ServiceState(enum.IntEnum):
    """The SCM states pymgr reports, in the only order it reports them."""

    START_PENDING = 1
    RUNNING = 2
    STOP_PENDING = 3
    STOPPED = 4


class ServiceHost(Protocol):
    """The running service's line to the SCM (pywin32's ReportServiceStatus)."""

    def report(self, state: ServiceState, exit_code: int = 0) -> None: ...


class ServiceRunner:
    """SvcRun and SvcStop, with the pywin32 calls left to ``host``.

    Args:
        host: where states are reported.
        config_path: the daemon's config file.
        platform: ``sys.platform`` (tests check the Windows rules elsewhere).
        log_to_file: send logs to ``[service] log_file`` (or state_dir/pymgr.log).
    """

    def __init__(
        self, host: ServiceHost, config_path: Path, *, platform: str = sys.platform, log_to_file: bool = True
    ) -> None:
        self.host = host
        self.config_path = config_path
        self.platform = platform
        self.log_to_file = log_to_file
        self.state: ServiceState | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = False

    def report(self, state: ServiceState, exit_code: int = 0) -> None:
        """Report ``state`` unless an equal or later one was reported already."""
        with self._lock:
            if self.state is not None and state <= self.state:
                return
            self.state = state
            self.host.report(state, exit_code)

    def run(self) -> int:
        """The service's life, on SvcRun's thread; returns the exit code."""
        self.report(ServiceState.START_PENDING)
        code = EXIT_CONFIG
        try:
            code = self._serve()
        finally:
            self.report(ServiceState.STOP_PENDING)
            self.report(ServiceState.STOPPED, code)
        return code

    def request_stop(self) -> None:
        """SvcStop, on the SCM's thread: begin the daemon's shutdown."""
        with self._lock:
            self._stop_requested = True
            loop, stop = self._loop, self._stop
        self.report(ServiceState.STOP_PENDING)
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop has closed: the daemon is down already
                pass

    def _serve(self) -> int:
        try:
            config = load_config(self.config_path)
            self._check(config)
        except ConfigError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_CONFIG
        if self.log_to_file:
            setup_logging(config.log_level, "text", config.service.log_file or config.state_dir / "pymgr.log")
        try:
            with daemon.event_loop_runner() as runner:
                runner.run(self._main(config))
        except daemon.StartupError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_CONFIG
        return 0

    def _check(self, config: Config) -> None:
        if self.platform == "win32" and (config.http.unix_socket is not None or config.http.tcp is None):
            raise ConfigError(
                f"config {self.config_path}: on Windows the API listens on TCP: "
                'set [http] unix_socket = "" and tcp = "127.0.0.1:PORT"'
            )

    async def _main(self, config: Config) -> None:
        stop = asyncio.Event()
        with self._lock:
            self._loop, self._stop = asyncio.get_running_loop(), stop
            if self._stop_requested:
                stop.set()
        try:
            await daemon.run(config, stop, hooks=_RunnerHooks(self))
        finally:
            with self._lock:
                self._loop = self._stop = None


class _RunnerHooks(ServiceHooks):
    def __init__(self, runner: ServiceRunner) -> None:
        self.runner = runner

    def ready(self, runtime: Runtime) -> None:
        self.runner.report(ServiceState.RUNNING)

    def stopping(self) -> None:
        self.runner.report(ServiceState.STOP_PENDING)


# -- commands: install, remove, start, stop, restart, status ---------------------


class ServiceControlError(Exception):
    """The SCM refused a request; the message is its reason."""


class ServiceControl(Protocol):
    """What the commands ask of the SCM (pywin32's win32serviceutil)."""

    def install(self, name: str, display_name: str, description: str, config_path: Path) -> None: ...

    def remove(self, name: str) -> None: ...

    def start(self, name: str) -> None: ...

    def stop(self, name: str) -> None: ...

    def query(self, name: str) -> ServiceState | None:
        """The service's state; None if no such service is installed."""
        ...


class WindowsCommands:
    """``pymgr service ...`` on Windows, against a ``ServiceControl``.

    Args:
        control: the SCM (or a fake).
        name: the service name (``--unit-name``).
        timeout_s: how long start and stop wait for the state they asked for.
        clock, sleep: time (tests pass fakes).
    """

    def __init__(
        self,
        control: ServiceControl,
        name: str = "pymgr",
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.control = control
        self.name = name
        self.timeout_s = timeout_s
        self.clock = clock
        self.sleep = sleep

    def run(self, command: str, config_path: Path | None = None) -> Outcome:
        """Run one command; a refusal by the SCM becomes exit 1 with its reason."""
        actions: dict[str, Callable[[], Outcome]] = {
            "install": lambda: self.install(config_path),
            "remove": self.remove,
            "start": self.start,
            "stop": self.stop,
            "restart": self.restart,
            "status": self.status,
        }
        if command not in actions:
            return Outcome(2, f"unknown command {command!r}; Windows services know {', '.join(actions)}")
        try:
            return actions[command]()
        except ServiceControlError as exc:
            return Outcome(1, f"service {self.name}: {command} failed: {exc}")

    def install(self, config_path: Path | None) -> Outcome:
        if config_path is None:
            return Outcome(2, "install needs --config FILE: the service reads it at every start")
        try:
            ServiceRunner(_NoHost(), config_path, platform="win32")._check(load_config(config_path))
        except ConfigError as exc:
            return Outcome(6, str(exc))
        self.control.install(self.name, DISPLAY_NAME, DESCRIPTION, config_path.absolute())
        return Outcome(
            0, f"installed service {self.name} (config {config_path.absolute()}); start it with pymgr service start"
        )

    def remove(self) -> Outcome:
        state = self.control.query(self.name)
        if state is None:
            return Outcome(0, f"service {self.name} is not installed; nothing to remove")
        note = ""
        if state is not ServiceState.STOPPED:
            stopped = self.stop()
            if stopped.code != 0:
                return stopped
            note = f"{stopped.message}\n"
        self.control.remove(self.name)
        return Outcome(0, f"{note}removed service {self.name}")

    def start(self) -> Outcome:
        state = self.control.query(self.name)
        if state is None:
            return Outcome(5, f"service {self.name} is not installed; run pymgr service install --config FILE")
        if state is ServiceState.RUNNING:
            return Outcome(0, f"service {self.name} is already running")
        self.control.start(self.name)
        return self._wait(ServiceState.RUNNING, "started")

    def stop(self) -> Outcome:
        state = self.control.query(self.name)
        if state is None:
            return Outcome(5, f"service {self.name} is not installed")
        if state is ServiceState.STOPPED:
            return Outcome(0, f"service {self.name} is not running")
        self.control.stop(self.name)
        return self._wait(ServiceState.STOPPED, "stopped")

    def restart(self) -> Outcome:
        stopped = self.stop()
        if stopped.code != 0:
            return stopped
        started = self.start()
        return Outcome(started.code, f"{stopped.message}\n{started.message}")

    def status(self) -> Outcome:
        state = self.control.query(self.name)
        if state is None:
            return Outcome(4, f"service {self.name} is not installed")
        code = {ServiceState.RUNNING: 0, ServiceState.STOPPED: 3}.get(state, 4)
        return Outcome(code, f"service {self.name} is {state.name.lower().replace('_', '-')}")

    def _wait(self, wanted: ServiceState, verb: str) -> Outcome:
        deadline = self.clock() + self.timeout_s
        while (state := self.control.query(self.name)) is not wanted:
            if self.clock() >= deadline:
                now = state.name.lower().replace("_", "-") if state is not None else "gone"
                return Outcome(1, f"service {self.name} is {now} {self.timeout_s:g} s after the request; see its log")
            if state is ServiceState.STOPPED and wanted is ServiceState.RUNNING:
                return Outcome(1, f"service {self.name} stopped during start-up; see its log (config errors are there)")
            self.sleep(POLL_S)
        return Outcome(0, f"{verb} service {self.name}")


class _NoHost:
    def report(self, state: ServiceState, exit_code: int = 0) -> None:
        pass
