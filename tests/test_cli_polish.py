"""The CLI's finish: --json anywhere, help without type noise, stop --wait, progress in %, UTC times;
and the daemon's log lines (--log-format text and json) in UTC ISO 8601.

Real runs of the console script against the stub server of tests/test_client.py
and against a real daemon (tests/conftest.py).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymgr.cli import main
from pymgr.cli.app import hoist_json
from pymgr.cli.tasks import _event_line
from pymgr._sse import SseParser
from pymgr.client import Event
from tests.conftest import BASE_CONFIG, PYMGR, READY_TIMEOUT_S, Daemon, wait_for
from tests.test_cli import Run, clean_env, daemon_run
from tests.test_client import StubServer, serving_stub

#: What a UTC ISO 8601 time looks like: to the second in the CLI, to the millisecond in logs.
CLI_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
LOG_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubServer]:
    with serving_stub(tmp_path_factory.mktemp("stub")) as server:
        yield server


@pytest.fixture
def run(stub: StubServer, tmp_path: Path) -> Run:
    """Run `pymgr --socket STUB ARGS...` in a clean environment."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(PYMGR), "--socket", str(stub.socket), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env())

    return run


# ---------------------------------------------------------------- --json after the subcommand


@pytest.mark.parametrize(
    "after",
    [
        ["tasks", "show", "12", "--json"],
        ["tasks", "--json", "show", "12"],
        ["call", "demo", "echo", "a=1", "--json"],
        ["health", "--json"],
    ],
)
def test_json_after_the_subcommand_is_the_same_as_before_it(run: Run, after: list[str]) -> None:
    before = ["--json", *(arg for arg in after if arg != "--json")]
    got, expected = run(*after), run(*before)
    assert (got.returncode, got.stderr) == (0, "")
    assert got.stdout == expected.stdout and json.loads(got.stdout) is not None


def test_json_after_double_dash_is_a_parameter() -> None:
    assert hoist_json(["call", "m", "a", "--json", "--", "--json"]) == [
        "--json",
        "call",
        "m",
        "a",
        "--",
        "--json",
    ]
    assert hoist_json(["health"]) == ["health"]


def test_an_error_after_a_late_json_is_json_on_stderr(run: Run) -> None:
    out = run("call", "demo", "nope", "--json")
    assert out.returncode == 1 and out.stdout == ""
    assert json.loads(out.stderr)["code"] == "not_found"


# ---------------------------------------------------------------- help


HELP_PAGES = [
    [],
    ["call"],
    ["health"],
    ["modules"],
    ["serve"],
    ["tasks"],
    ["tasks", "list"],
    ["tasks", "show"],
    ["tasks", "start"],
    ["tasks", "stop"],
    ["tasks", "logs"],
    ["tasks", "watch"],
    ["daemon", "start"],
    ["service", "install"],
]


@pytest.mark.parametrize("command", HELP_PAGES, ids=lambda c: " ".join(c) or "pymgr")
def test_help_shows_no_type_noise(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: pymgr" in out
    assert not re.search(r"<(bool|str|int|float|path|list\[\w+\])>|\{[A-Z]+\}", out), out


def test_help_shows_arguments_with_their_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks", "start", "--help"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"TYPE\s+TEXT\s+The task type", out) and "Usage: pymgr tasks start [OPTIONS] TYPE" in out
    assert re.search(
        r"--wait\s+Wait until the run has ended",
        (main(["tasks", "stop", "--help"]), capsys.readouterr().out)[1],
    )


# ---------------------------------------------------------------- records: times and progress


def test_records_show_utc_times_and_progress_in_percent(run: Run) -> None:
    out = run("tasks", "show", "11")
    assert out.returncode == 0, out.stderr
    assert re.search(r"(?m)^started_at\s+2023-11-14T22:13:21Z$", out.stdout)
    assert re.search(r"(?m)^ended_at\s+2023-11-14T22:15:00Z$", out.stdout)
    shown = run("--json", "tasks", "show", "11").stdout
    assert json.loads(shown)["ended_at"] == "2023-11-14T22:15:00.000+00:00"  # --json: exactly as sent


def test_watch_lines_carry_utc_time_and_percent() -> None:
    line = _event_line(
        Event(1, "progress", None, {"id": 7, "progress": 42.5, "progress_message": "x"}), False
    )
    assert line is not None and re.fullmatch(rf"{CLI_TIME}  task 7  progress  42\.5% x", line)
    line = _event_line(
        Event(2, "state", None, {"id": 7, "type": "scan", "state": "running", "progress": 3}), False
    )
    assert line is not None and re.fullmatch(rf"{CLI_TIME}  task 7 scan  running  3%", line)


def test_a_running_scan_shows_its_progress_in_percent(daemon: Daemon) -> None:
    started = json.loads(
        daemon_run(daemon, "--json", "tasks", "start", "scan", "task_id=1", "duration=30").stdout
    )
    task_id = str(started["id"])
    wait_for(lambda: json.loads(daemon_run(daemon, "--json", "tasks", "show", task_id).stdout)["progress"])
    out = daemon_run(daemon, "tasks", "show", task_id)
    assert re.search(r"(?m)^progress\s+\d+(\.\d+)?%$", out.stdout), out.stdout
    assert re.search(rf"(?m)^started_at\s+{CLI_TIME}$", out.stdout)
    daemon_run(daemon, "tasks", "stop", task_id, "--wait")


# ---------------------------------------------------------------- stop --wait


def test_stop_wait_prints_the_final_record(daemon: Daemon) -> None:
    started = json.loads(
        daemon_run(daemon, "--json", "tasks", "start", "scan", "task_id=2", "duration=60").stdout
    )
    task_id = str(started["id"])
    wait_for(
        lambda: (
            json.loads(daemon_run(daemon, "--json", "tasks", "show", task_id).stdout)["state"] == "running"
        )
    )
    out = daemon_run(daemon, "tasks", "stop", task_id, "--wait", "--json")
    assert (out.returncode, out.stderr) == (0, "")
    final = json.loads(out.stdout)
    assert (final["state"], final["cancel_source"]) == ("stopped", "user") and final["ended_at"]
    again = daemon_run(daemon, "tasks", "stop", task_id, "--wait")  # already final: printed at once
    assert again.returncode == 0 and re.search(r"(?m)^state\s+stopped$", again.stdout)


def test_stop_wait_gives_up_after_its_timeout(daemon: Daemon) -> None:
    started = json.loads(daemon_run(daemon, "--json", "tasks", "start", "scan", "task_id=3").stdout)
    task_id = str(started["id"])
    wait_for(
        lambda: (
            json.loads(daemon_run(daemon, "--json", "tasks", "show", task_id).stdout)["state"] == "running"
        )
    )
    out = daemon_run(daemon, "tasks", "stop", task_id, "--wait", "--timeout", "0")
    if out.returncode == 0:  # the scan ended within the first read: nothing to give up on
        assert re.search(r"(?m)^state\s+stopped$", out.stdout)
        return
    assert out.returncode == 1
    assert out.stderr == (
        f"error: unavailable: task {task_id} is still running after 0 s; see it with: pymgr tasks show ID "
        "(or wait longer with --timeout SECONDS)\n"
    )


# ---------------------------------------------------------------- the daemon's log lines


def _serve(directory: Path, *options: str) -> str:
    """Run ``pymgr serve`` on the test config until it is ready, stop it; its stderr."""
    directory.mkdir()
    config = directory / "pymgr.toml"
    config.write_text(BASE_CONFIG)
    log = directory / "stderr"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(PYMGR), "serve", "--config", str(config), *options],
            stderr=sink,
            env=clean_env(TZ="Asia/Tokyo"),
        )
    try:
        wait_for(lambda: (directory / "pymgr.sock").exists() and "ready" in log.read_text(), READY_TIMEOUT_S)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return log.read_text()


def test_json_log_lines_are_json_objects_in_utc(tmp_path: Path) -> None:
    lines = _serve(tmp_path / "d", "--log-format", "json").splitlines()
    assert len(lines) > 3
    entries = [json.loads(line) for line in lines]  # every line is one object
    for entry in entries:
        assert {"time", "level", "logger", "message", "pid"} <= set(entry), entry
        assert re.fullmatch(LOG_TIME, entry["time"]), entry
    assert any(entry["message"].startswith("ready ") for entry in entries)


def test_text_log_lines_start_with_the_utc_time(tmp_path: Path) -> None:
    lines = [line for line in _serve(tmp_path / "d").splitlines() if not line.startswith((" ", "\t"))]
    assert lines and all(
        re.match(rf"{LOG_TIME} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ", line) for line in lines
    ), lines


def test_watch_json_prints_the_event_as_the_stream_carried_it() -> None:
    """Byte for byte what `tasks watch --json` printed when the client yielded the parser's dicts."""
    stream = b'id: 5\nevent: progress\ntime: 1765104343.120\ndata: {"id": 7, "progress": 42.5}\n\n'
    [parsed] = SseParser().feed(stream)
    assert _event_line(Event.from_json(parsed), True) == json.dumps(parsed, ensure_ascii=False)
