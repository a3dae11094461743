"""The Windows service, everything but pywin32: state order, stop handling, command dispatch.

pywin32 is replaced by recording fakes at its boundary only (``ServiceHost``
and ``ServiceControl``); the daemon behind them is the real one, on a real
TCP socket. Nothing here proves pywin32 itself behaves as assumed: see
docs/install.md, "Windows".
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import pytest

from pymgr.cli import main
from pymgr.service import windows
from pymgr.service.winservice import (
    DESCRIPTION,
    DISPLAY_NAME,
    ServiceControlError,
    ServiceRunner,
    ServiceState,
    WindowsCommands,
)
from tests.service.helpers import free_port, wait_for

START, RUNNING, STOP, STOPPED = (
    ServiceState.START_PENDING,
    ServiceState.RUNNING,
    ServiceState.STOP_PENDING,
    ServiceState.STOPPED,
)


def _tcp_config(path: Path, port: int) -> Path:
    path.write_text(
        f'state_dir = "state"\n[http]\nunix_socket = ""\ntcp = "127.0.0.1:{port}"\n'
        '[[auth.keys]]\nid = "web"\nsecret = "0123456789abcdef0123456789abcdef"\n'
    )
    path.chmod(0o600)  # it holds a secret: pymgr refuses it readable by others
    return path


def _bound(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class RecordingHost:
    """ServiceHost: records each report, and whether the API port accepted connections right then."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.reports: list[tuple[ServiceState, int, bool]] = []
        self.runner: ServiceRunner | None = None

    def report(self, state: ServiceState, exit_code: int = 0) -> None:
        self.reports.append((state, exit_code, bool(self.port) and _bound(self.port)))

    def states(self) -> list[ServiceState]:
        return [state for state, _, _ in self.reports]


def test_running_is_reported_only_once_the_listener_is_bound_and_stop_is_clean(tmp_path: Path) -> None:
    port = free_port()
    host = RecordingHost(port)
    runner = ServiceRunner(host, _tcp_config(tmp_path / "pymgr.toml", port), log_to_file=False)

    def scm() -> None:  # the SCM's thread: wait for RUNNING, then ask for a stop
        wait_for(lambda: RUNNING in host.states(), what="RUNNING reported")
        runner.request_stop()

    thread = threading.Thread(target=scm)
    thread.start()
    assert runner.run() == 0
    thread.join()
    assert host.reports[0] == (START, 0, False)
    assert host.reports[1] == (RUNNING, 0, True)  # the port answered when RUNNING went out
    assert host.states() == [START, RUNNING, STOP, STOPPED] and host.reports[-1][1] == 0
    assert not _bound(port)


def test_a_stop_during_start_pending_never_reports_running(tmp_path: Path) -> None:
    port = free_port()

    class StopEarly(RecordingHost):
        def report(self, state: ServiceState, exit_code: int = 0) -> None:
            super().report(state, exit_code)
            if state is START and self.runner is not None:
                threading.Thread(target=self.runner.request_stop).start()

    host = StopEarly(port)
    host.runner = runner = ServiceRunner(host, _tcp_config(tmp_path / "pymgr.toml", port), log_to_file=False)
    assert runner.run() == 0
    assert host.states() == [START, STOP, STOPPED]


def test_a_config_error_ends_stopped_with_exit_78(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    host = RecordingHost()
    assert ServiceRunner(host, tmp_path / "missing.toml", log_to_file=False).run() == 78
    assert [(s, c) for s, c, _ in host.reports] == [(START, 0), (STOP, 0), (STOPPED, 78)]
    assert re.search(r"cannot start: cannot read config \S+missing\.toml", caplog.text)


def test_on_windows_the_api_must_be_tcp(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pymgr.toml"
    path.write_text('[http]\nunix_socket = "pymgr.sock"\n')
    host = RecordingHost()
    assert ServiceRunner(host, path, platform="win32", log_to_file=False).run() == 78
    assert host.states() == [START, STOP, STOPPED]
    assert re.search(
        r'on Windows the API listens on TCP: set \[http\] unix_socket = "" and tcp = "127\.0\.0\.1:PORT"',
        caplog.text,
    )


def test_a_listener_that_cannot_bind_ends_stopped_with_exit_78(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        host = RecordingHost()
        code = ServiceRunner(
            host, _tcp_config(tmp_path / "pymgr.toml", busy.getsockname()[1]), log_to_file=False
        ).run()
    assert code == 78 and host.states() == [START, STOP, STOPPED]


# -- commands against a recording ServiceControl ------------------------------------------


class RecordingControl:
    """ServiceControl: records calls; ``states`` scripts what successive queries return."""

    def __init__(self, *states: ServiceState | None, fail: str | None = None) -> None:
        self.states = list(states)
        self.calls: list[tuple[str, ...]] = []
        self.fail = fail

    def _record(self, *call: str) -> None:
        self.calls.append(call)
        if self.fail == call[0]:
            raise ServiceControlError("Access is denied. (Windows error 5)")

    def install(self, name: str, display_name: str, description: str, config_path: Path) -> None:
        self._record("install", name, display_name, description, str(config_path))

    def remove(self, name: str) -> None:
        self._record("remove", name)

    def start(self, name: str) -> None:
        self._record("start", name)

    def stop(self, name: str) -> None:
        self._record("stop", name)

    def query(self, name: str) -> ServiceState | None:
        self.calls.append(("query", name))
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _commands(control: RecordingControl, timeout_s: float = 5.0) -> WindowsCommands:
    clock = FakeClock()
    return WindowsCommands(control, "pymgr", timeout_s, clock=clock, sleep=clock.sleep)


def _actions(control: RecordingControl) -> list[str]:
    return [call[0] for call in control.calls if call[0] != "query"]


def test_install_stores_the_absolute_config_path(tmp_path: Path) -> None:
    control = RecordingControl(None)
    path = _tcp_config(tmp_path / "pymgr.toml", 8080)
    outcome = _commands(control).run("install", path)
    assert outcome.code == 0 and outcome.message.startswith("installed service pymgr (config ")
    assert control.calls == [("install", "pymgr", DISPLAY_NAME, DESCRIPTION, str(path.absolute()))]


def test_install_refuses_a_config_windows_cannot_serve(tmp_path: Path) -> None:
    path = tmp_path / "pymgr.toml"
    path.write_text("")  # the default: a Unix socket
    outcome = _commands(RecordingControl(None)).run("install", path)
    assert outcome.code == 6 and re.search(r"on Windows the API listens on TCP", outcome.message)
    assert _commands(RecordingControl(None)).run("install").code == 2


def test_start_waits_for_running() -> None:
    control = RecordingControl(STOPPED, START, START, RUNNING)
    assert _commands(control).run("start").message == "started service pymgr"
    assert _actions(control) == ["start"]


def test_start_gives_up_after_the_timeout_and_says_where_it_stands() -> None:
    outcome = _commands(RecordingControl(STOPPED, START), timeout_s=2).run("start")
    assert (outcome.code, outcome.message) == (
        1,
        "service pymgr is start-pending 2 s after the request; see its log",
    )


def test_a_service_that_stops_during_start_up_is_a_failure() -> None:
    outcome = _commands(RecordingControl(STOPPED, START, STOPPED)).run("start")
    assert (outcome.code, outcome.message) == (
        1,
        "service pymgr stopped during start-up; see its log (config errors are there)",
    )


def test_stop_restart_status_remove() -> None:
    assert _commands(RecordingControl(STOPPED)).run("stop").message == "service pymgr is not running"
    control = RecordingControl(RUNNING, STOP, STOPPED, STOPPED, START, RUNNING)
    restarted = _commands(control).run("restart")
    assert (restarted.code, restarted.message) == (0, "stopped service pymgr\nstarted service pymgr")
    assert _actions(control) == ["stop", "start"]
    assert [_commands(RecordingControl(s)).run("status").code for s in (RUNNING, STOPPED, START, None)] == [
        0,
        3,
        4,
        4,
    ]
    control = RecordingControl(RUNNING, RUNNING, STOPPED)
    assert _commands(control).run("remove").message == "stopped service pymgr\nremoved service pymgr"
    assert _actions(control) == ["stop", "remove"]
    assert _commands(RecordingControl(None)).run("start").code == 5


def test_a_refusal_by_the_scm_is_exit_1_with_its_reason() -> None:
    outcome = _commands(RecordingControl(STOPPED, fail="start")).run("start")
    assert (outcome.code, outcome.message) == (
        1,
        "service pymgr: start failed: Access is denied. (Windows error 5)",
    )


# -- the CLI, posing as Windows ------------------------------------------------------------


def test_the_cli_dispatches_to_the_windows_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    control = RecordingControl(RUNNING)
    monkeypatch.setattr("pymgr.cli.service._platform", lambda: "win32")
    monkeypatch.setattr("pymgr.cli.service._windows_control", lambda: control)
    assert main(["service", "status", "--unit-name", "pymgr-win"]) == 0
    assert capsys.readouterr().out == "service pymgr-win is running\n"
    path = _tcp_config(tmp_path / "pymgr.toml", 8080)
    assert main(["service", "install", "--config", str(path), "--unit-name", "pymgr-win"]) == 0
    assert control.calls[-1] == ("install", "pymgr-win", DISPLAY_NAME, DESCRIPTION, str(path))
    assert main(["service", "reload"]) == 3
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("reload is not available for the Windows service; use pymgr service restart")
    )


def test_without_pywin32_the_cli_names_the_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if windows.win32serviceutil is not None:  # pragma: no cover - Windows with pywin32
        pytest.skip("pywin32 is installed")
    monkeypatch.setattr("pymgr.cli.service._platform", lambda: "win32")
    assert main(["service", "start"]) == 1
    assert (
        capsys.readouterr().err.strip()
        == "error: the Windows service needs pywin32: pip install pywin32 (Windows only)"
    )
    with pytest.raises(
        RuntimeError, match=r"^the Windows service needs pywin32: pip install pywin32 \(Windows only\)$"
    ):
        windows.Pywin32Control()
