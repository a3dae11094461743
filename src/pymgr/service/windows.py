"""The pywin32 boundary of the Windows service: nothing else in pymgr imports pywin32.

Two adapters, kept as thin as pywin32 allows; all the logic they call is in
``winservice`` and is tested on Linux with fakes of these two classes.

- ``PymgrService`` is the class pythonservice.exe hosts. pywin32's default
  ``SvcRun`` reports RUNNING *before* the service has done anything (the
  2014 design's bug); ours hands the whole life to ``ServiceRunner``, which
  reports RUNNING only once every listener is bound.
- ``Pywin32Control`` installs, removes, starts, stops and queries a service
  through ``win32serviceutil``; the config path is stored in the service's
  registry key (``Parameters\\config``) and read back at every start.

Not run on Windows in this project's CI: docs/install.md says what was and
was not verified.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pymgr.service.winservice import ServiceControlError, ServiceRunner, ServiceState

try:
    import pywintypes
    import win32service
    import win32serviceutil
except ModuleNotFoundError:  # pragma: no cover - every platform but Windows
    pywintypes = win32service = win32serviceutil = None

#: Where pythonservice.exe finds the service class.
SERVICE_CLASS = "pymgr.service.windows.PymgrService"
#: The registry value (under the service's Parameters key) holding the config path.
CONFIG_OPTION = "config"
#: Milliseconds the SCM should wait before it expects the next report.
WAIT_HINT_MS = 30_000

T = TypeVar("T")


def require_pywin32() -> None:
    """Raises: RuntimeError naming the package, when pywin32 is missing."""
    if win32serviceutil is None:
        raise RuntimeError("the Windows service needs pywin32: pip install pywin32 (Windows only)")


def _state_codes() -> dict[ServiceState, int]:
    return {
        ServiceState.START_PENDING: win32service.SERVICE_START_PENDING,
        ServiceState.RUNNING: win32service.SERVICE_RUNNING,
        ServiceState.STOP_PENDING: win32service.SERVICE_STOP_PENDING,
        ServiceState.STOPPED: win32service.SERVICE_STOPPED,
    }


_Framework: type = win32serviceutil.ServiceFramework if win32serviceutil is not None else object


class PymgrService(_Framework):
    """The service pythonservice.exe runs; args[0] is its installed name."""

    _svc_name_ = "pymgr"
    _svc_display_name_ = "pymgr task daemon"

    def __init__(self, args: list[str]) -> None:
        require_pywin32()
        super().__init__(args)
        config = win32serviceutil.GetServiceCustomOption(args[0], CONFIG_OPTION)
        self._runner = ServiceRunner(self, Path(config or "pymgr.toml"))

    def report(self, state: ServiceState, exit_code: int = 0) -> None:
        """ServiceHost: tell the SCM; a non-zero exit code marks a failed service."""
        win32_exit = 1066 if exit_code else 0  # ERROR_SERVICE_SPECIFIC_ERROR: look at svcExitCode
        self.ReportServiceStatus(_state_codes()[state], WAIT_HINT_MS, win32_exit, exit_code)

    def SvcRun(self) -> None:  # noqa: N802 - pywin32's name
        self._runner.run()

    def SvcStop(self) -> None:  # noqa: N802
        self._runner.request_stop()

    def SvcShutdown(self) -> None:  # noqa: N802 - the host shuts down: the same clean stop
        self._runner.request_stop()

    def SvcInterrogate(self) -> None:  # noqa: N802 - pywin32's default claims RUNNING whatever the state
        if self._runner.state is not None:
            self.ReportServiceStatus(_state_codes()[self._runner.state], WAIT_HINT_MS)


class Pywin32Control:
    """``ServiceControl`` through win32serviceutil; pywin32 errors become ``ServiceControlError``."""

    def __init__(self) -> None:
        require_pywin32()

    def install(self, name: str, display_name: str, description: str, config_path: Path) -> None:
        self._call(
            win32serviceutil.InstallService,
            SERVICE_CLASS,
            name,
            display_name,
            startType=win32service.SERVICE_AUTO_START,
            description=description,
        )
        self._call(win32serviceutil.SetServiceCustomOption, name, CONFIG_OPTION, str(config_path))

    def remove(self, name: str) -> None:
        self._call(win32serviceutil.RemoveService, name)

    def start(self, name: str) -> None:
        self._call(win32serviceutil.StartService, name)

    def stop(self, name: str) -> None:
        self._call(win32serviceutil.StopService, name)

    def query(self, name: str) -> ServiceState | None:
        try:
            status = win32serviceutil.QueryServiceStatus(name)
        except pywintypes.error as exc:
            if exc.winerror == 1060:  # ERROR_SERVICE_DOES_NOT_EXIST
                return None
            raise ServiceControlError(exc.strerror) from None
        codes = {code: state for state, code in _state_codes().items()}
        return codes.get(status[1], ServiceState.STOP_PENDING)  # paused states count as "not running"

    @staticmethod
    def _call(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return func(*args, **kwargs)
        except pywintypes.error as exc:
            raise ServiceControlError(f"{exc.strerror} (Windows error {exc.winerror})") from None
