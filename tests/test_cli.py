"""The `pymgr` console script, run as a subprocess against real servers.

Most tests talk to the stub server of tests/test_client.py (canned replies,
every error code); the last ones talk to the real daemon (tests/conftest.py).
Each run gets a clean environment: no $PYMGR_SOCKET, no $COLUMNS, and a
working directory without ./var, so the defaults never reach a real daemon.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pymgr import __version__
from pymgr.cli import main
from tests.conftest import Daemon
from tests.test_client import TASKS, StubServer, refusing_socket, serving_stub

PYMGR = Path(sys.executable).parent / "pymgr"

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubServer]:
    with serving_stub(tmp_path_factory.mktemp("stub")) as server:
        yield server


@pytest.fixture
def stub(served: StubServer) -> StubServer:
    """This module's stub server, its request log and switches reset."""
    served.app.reset()
    return served


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYMGR_SOCKET", "COLUMNS")}
    return {**env, **extra}


@pytest.fixture
def run(stub: StubServer, tmp_path: Path) -> Run:
    """Run `pymgr --socket STUB ARGS...`; ``socket=None`` leaves --socket out."""

    def run(*args: str, socket: Path | None = stub.socket, env: dict[str, str] | None = None) -> Any:
        argv = [str(PYMGR), *(["--socket", str(socket)] if socket else []), *args]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env or clean_env()
        )

    return run


@pytest.fixture
def cli(
    stub: StubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Run:
    """Like ``run``, in this process (``main(argv)``): for the long parameter tables."""
    monkeypatch.delenv("PYMGR_SOCKET", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.chdir(tmp_path)

    def cli(*args: str) -> Any:
        code = main(["--socket", str(stub.socket), *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return cli


def echoed(run: Run, *params: str) -> Any:
    """What `pymgr --json call demo echo PARAMS` sent, as the stub echoes it."""
    out = run("--json", "call", "demo", "echo", *params)
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    return json.loads(out.stdout)


def posts(stub: StubServer) -> list[Any]:
    return [r for r in stub.app.requests if r[0] == "POST"]


# ---------------------------------------------------------------- health, modules, output


def test_health_pretty_and_json(run: Run) -> None:
    out = run("health")
    assert out.returncode == 0 and out.stderr == ""
    assert re.search(r"(?m)^status\s+ok$", out.stdout) and re.search(r"(?m)^version\s+0\.1\.0$", out.stdout)
    out = run("--json", "health")
    assert out.stdout.count("\n") == 1
    assert json.loads(out.stdout) == {"status": "ok", "version": "0.1.0", "pid": os.getpid(), "uptime_s": 1.5}


def test_modules_table_shows_actions_params_and_doc(run: Run) -> None:
    out = run("modules")
    assert out.returncode == 0
    [row] = [line for line in out.stdout.splitlines() if "demo.echo" in line]
    assert "demo.echo (read-only)" in row and "Return the params exactly as received." in row
    assert "count:int, ratio?:float, flag?:bool, items?:list|null, opts?:dict|null, label?:str, " in row
    assert "limit?:int|null, mode?:str, x?:any" in row
    assert json.loads(run("--json", "modules").stdout)[0]["actions"][0]["name"] == "echo"


def test_modules_allowed_asks_the_daemon_for_what_the_caller_may_call(run: Run, stub: StubServer) -> None:
    assert run("modules", "--allowed").returncode == 0
    assert stub.app.requests[-1][1:3] == ("/v1/modules", {"allowed": "true"})
    assert json.loads(run("modules", "--allowed", "--json").stdout)[0]["name"] == "demo"
    run("modules")
    assert stub.app.requests[-1][1:3] == ("/v1/modules", {})
    assert "--allowed" in run("modules", "--help").stdout


def test_version_and_help(run: Run) -> None:
    out = run("--version", socket=None)
    assert (out.returncode, out.stdout) == (0, f"pymgr {__version__}\n")
    out = run("--help", socket=None)
    assert out.returncode == 0 and "PYMGR_SOCKET" in out.stdout and "/run/pymgr/pymgr.sock" in out.stdout


def test_main_returns_the_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert main(["no-such-command"]) == 2
    assert capsys.readouterr().out == f"pymgr {__version__}\n"


def test_a_string_result_prints_as_text_never_as_markup_or_escapes(run: Run, stub: StubServer) -> None:
    stub.app.text_result = "[bold]hi[/bold]\x1b[2J\u202eend"
    out = run("call", "demo", "text")
    assert out.stdout == "[bold]hi[/bold]\\x1b[2J\\u202eend\n"
    assert json.loads(run("--json", "call", "demo", "text").stdout) == stub.app.text_result


# ---------------------------------------------------------------- call: parameters typed by the schema


def test_values_are_typed_by_the_actions_schema(run: Run) -> None:
    sent = echoed(
        run,
        "count=3",
        "ratio=0.5",
        "flag=yes",
        "items=[1,2]",
        'opts={"a":1}',
        "label=42",
        "limit=null",
        "mode=slow",
        "x=anything",
    )
    assert sent == {
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "items": [1, 2],
        "opts": {"a": 1},
        "label": "42",
        "limit": None,
        "mode": "slow",
        "x": "anything",
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("0", False),
        ("No", False),
    ],
)
def test_boolean_spellings(cli: Run, text: str, value: bool) -> None:
    assert echoed(cli, f"flag={text}") == {"flag": value}


def test_number_and_integer_edges(run: Run) -> None:
    assert echoed(run, "count=-7", "ratio=1e3", "limit=+5") == {"count": -7, "ratio": 1000.0, "limit": 5}
    assert echoed(run, "ratio=2", "label=", "q=a=b") == {"ratio": 2.0, "label": "", "q": "a=b"}


def test_raw_json_and_unknown_names_pass_through(run: Run, stub: StubServer) -> None:
    assert echoed(run, "label:=5", 'x:={"k":[1,null]}', "other=5") == {
        "label": 5,
        "x": {"k": [1, None]},
        "other": "5",
    }
    stub.app.reset()
    assert echoed(run, "count:=1") == {"count": 1}
    assert [r[1] for r in stub.app.requests] == ["/v1/modules/demo/echo"]  # all JSON: no schema fetched


def test_a_forbidden_schema_listing_sends_strings(run: Run, stub: StubServer) -> None:
    stub.app.modules_forbidden = True
    assert echoed(run, "count=3") == {"count": "3"}


def typed(name: str, expects: str, got: str, example: str) -> str:
    """The usage message for a value that does not fit its schema type."""
    return (
        f"parameter '{name}' of demo.echo expects {expects}, got '{got}'; "
        f"write {name}={example}, or {name}:=JSON for a raw JSON value"
    )


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("count=abc", typed("count", "an integer", "abc", "42")),
        ("count=1.5", typed("count", "an integer", "1.5", "42")),
        ("ratio=nan", typed("ratio", "a finite number", "nan", "1.5")),
        ("ratio=-inf", typed("ratio", "a finite number", "-inf", "1.5")),
        ("flag=maybe", typed("flag", "a boolean (true/false, 1/0, yes/no)", "maybe", "true")),
        ("items=1,2", typed("items", "a JSON array or null", "1,2", "[1,2]")),
        ("opts=[1]", typed("opts", "a JSON object or null", "[1]", '{"a":1}')),
        (
            "x:={bad",
            "parameter 'x': '{bad' is not JSON "
            "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        ),
        ("count", "expected name=value or name:=JSON, got 'count'"),
        ("=1", "expected name=value or name:=JSON, got '=1'"),
        (
            "x:=NaN",
            "parameter 'x': 'NaN' is not JSON (NaN is not a JSON number; JSON carries finite numbers only)",
        ),
        (
            "x:=[1e999]",
            "parameter 'x': '[1e999]' is not JSON (1e999 is not a JSON number; JSON carries finite numbers only)",
        ),
        ("items=[-Infinity]", typed("items", "a JSON array or null", "[-Infinity]", "[1,2]")),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_the_param(
    cli: Run, stub: StubServer, arg: str, message: str
) -> None:
    out = cli("call", "demo", "echo", arg)
    assert (out.returncode, out.stdout) == (2, "")
    assert re.fullmatch(rf"error: usage: {re.escape(message)}\n", out.stderr), out.stderr
    assert posts(stub) == []  # nothing was sent


def test_a_param_given_twice_is_a_usage_error(run: Run) -> None:
    out = run("--json", "call", "demo", "echo", "count=1", "count:=2")
    assert out.returncode == 2
    message = "parameter 'count' given twice; give each parameter once"
    assert json.loads(out.stderr) == {"code": "usage", "message": message}


# ---------------------------------------------------------------- errors and exit codes


@pytest.mark.parametrize("code", ["bad_params", "not_found", "forbidden", "internal", "unavailable"])
def test_a_server_error_exits_1(cli: Run, code: str) -> None:
    out = cli("call", "errors", code)
    assert (out.returncode, out.stdout, out.stderr) == (1, "", f"error: {code}: canned {code} error\n")


def test_a_server_error_with_json_is_the_error_object_on_stderr(run: Run) -> None:
    out = run("--json", "tasks", "show", "nope")
    assert (out.returncode, out.stdout) == (1, "")
    assert json.loads(out.stderr) == {
        "code": "not_found",
        "message": "no task 'nope'",
        "details": {"id": "nope"},
    }


def test_a_reply_that_is_not_json_exits_1(run: Run, stub: StubServer) -> None:
    out = run("call", "bad", "html")
    assert out.returncode == 1
    assert out.stderr.startswith(
        f"error: internal: the server at socket {stub.socket} sent HTTP 200 with a body that"
    )


def test_a_missing_socket_exits_69(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "none.sock"
    out = run("health", socket=path)
    assert (out.returncode, out.stdout) == (69, "")
    assert out.stderr == (
        f"error: unavailable: cannot reach pymgr: no socket at {path}; is the daemon running? "
        "Start it with `pymgr serve --config FILE`, or pass --socket / set PYMGR_SOCKET\n"
    )
    out = run("--json", "tasks", "list", socket=path)
    assert out.returncode == 69 and json.loads(out.stderr)["code"] == "unavailable"


def test_a_refused_connection_exits_69(run: Run, tmp_path: Path) -> None:
    out = run("tasks", "types", socket=refusing_socket(tmp_path))
    assert out.returncode == 69 and ": connection refused (nothing is listening); " in out.stderr


def test_the_default_socket_is_used_without_option_or_env(run: Run) -> None:
    out = run("health", socket=None)
    if Path("/run/pymgr/pymgr.sock").exists():
        pytest.skip("a daemon's socket exists at /run/pymgr/pymgr.sock")
    assert out.returncode == 69 and "no socket at /run/pymgr/pymgr.sock;" in out.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_socket_without_permission_exits_69_and_says_so(stub: StubServer, tmp_path: Path) -> None:
    path = refusing_socket(tmp_path)  # tmp_path is root's: nobody may not enter it either
    out = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            str(PYMGR),
            "--socket",
            str(path),
            "health",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env=clean_env(),
    )
    assert out.returncode == 69, out.stderr
    assert f"error: unavailable: cannot reach pymgr at socket {path}: permission denied; " in out.stderr


# ---------------------------------------------------------------- socket, url and environment


def test_the_socket_env_is_honoured(run: Run, stub: StubServer) -> None:
    out = run("--json", "health", socket=None, env=clean_env(PYMGR_SOCKET=str(stub.socket)))
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "ok"


def test_url_beats_the_socket_env_but_not_the_option(run: Run, stub: StubServer, tmp_path: Path) -> None:
    env = clean_env(PYMGR_SOCKET=str(tmp_path / "none.sock"))
    out = run("--url", stub.url, "--json", "health", socket=None, env=env)
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "ok"
    out = run("--url", stub.url, "health")
    assert out.returncode == 2 and "give --socket or --url, not both" in out.stderr
    out = run("--url", "ftp://x", "health", socket=None)
    assert (out.returncode, out.stderr) == (
        2,
        "error: usage: url must start with http:// or https://, not 'ftp://x'\n",
    )


# ---------------------------------------------------------------- tasks


def test_tasks_list_table(run: Run) -> None:
    out = run("tasks", "list")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert re.match(r"^\s*id\s+type\s+key\s+state\s+pid\s+exit/signal\s+started\s+ended\s*$", lines[0])
    t2 = next(line for line in lines if line.lstrip().startswith("12 "))
    assert re.search(
        r"12\s+scan\s+scan:2\s+stopped\s+4343\s+SIGTERM\s+2023-11-14T22:13:21Z\s+2023-11-14T22:15:00Z$", t2
    )
    t1 = next(line for line in lines if line.lstrip().startswith("11 "))
    assert re.search(r"11\s+scan\s+scan:1\s+succeeded\s+4242\s+0\s", t1)
    t0 = next(line for line in lines if line.lstrip().startswith("10 "))
    assert re.search(r"10\s+echo\s+-\s+running\s+4242\s+-\s+2023-11-14T22:13:21Z\s+-\s*$", t0)


def test_tasks_list_filters_and_json(run: Run, stub: StubServer) -> None:
    out = run(
        "--json",
        "tasks",
        "list",
        "--state",
        "running",
        "--type",
        "echo",
        "--key",
        "k",
        "--started-by",
        "root",
    )
    assert out.returncode == 0 and json.loads(out.stdout) == []
    assert stub.app.requests[-1][2] == {"state": "running", "type": "echo", "key": "k", "started_by": "root"}
    assert json.loads(run("--json", "tasks", "list").stdout) == TASKS


def test_tasks_list_pages(run: Run, stub: StubServer) -> None:
    out = run("tasks", "list", "--limit", "2", "--before", "41")
    assert stub.app.requests[-1][2] == {"limit": "2", "before": "41"}
    assert out.returncode == 0 and out.stderr == ""  # an empty page: nothing older to ask for
    out = run("tasks", "list")
    assert out.stderr == "older tasks: the same command with --before 10\n"
    assert run("tasks", "list", "--limit", "0").returncode == 2


def test_tasks_show(run: Run) -> None:
    out = run("tasks", "show", "11")
    assert out.returncode == 0
    assert re.search(r"(?m)^argv\s+scan --task-id 1$", out.stdout)
    assert re.search(r"(?m)^state\s+succeeded$", out.stdout)
    assert re.search(r"(?m)^params\s+\{\"task_id\": 1\}$", out.stdout)
    assert json.loads(run("--json", "tasks", "show", "11").stdout) == TASKS[1]


def test_tasks_start_types_params_by_the_task_type(run: Run, stub: StubServer) -> None:
    out = run("--json", "tasks", "start", "scan", "task_id=1", "duration=5", "--key", "scan:1")
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "queued"
    assert posts(stub)[-1][3] == {"type": "scan", "params": {"task_id": 1, "duration": 5.0}, "key": "scan:1"}
    out = run("tasks", "start", "scan", "task_id=one")
    assert out.returncode == 2
    assert out.stderr.startswith(
        "error: usage: parameter 'task_id' of task type scan expects an integer, got 'one';"
    )


def test_tasks_stop_and_types(run: Run) -> None:
    out = run("tasks", "stop", "12")
    assert out.returncode == 0 and re.search(r"(?m)^state\s+stopped$", out.stdout)
    out = run("tasks", "types")
    assert re.search(
        r"(?m)^\s*scan\s+task_id:int, duration\?:float\s+Scan hosts for vulnerabilities\.\s*$", out.stdout
    )


def test_serve_needs_an_existing_config(run: Run, tmp_path: Path) -> None:
    # A relative path (run's cwd is tmp_path): a long one would be wrapped inside the error's box.
    out = run("serve", "--config", "missing.toml", socket=None)
    assert out.returncode == 2 and "missing.toml" in out.stderr


# ---------------------------------------------------------------- the real daemon


def daemon_run(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(PYMGR), "--socket", str(daemon.socket), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=daemon.dir, env=clean_env())


def test_daemon_call_echo(daemon: Daemon) -> None:
    out = daemon_run(daemon, "--json", "call", "demo", "echo", "x=1", "y:=[1,2]")
    # echo takes **params: untyped
    assert (out.returncode, json.loads(out.stdout)) == (
        0,
        {"x": "1", "y": [1, 2]},
    )
    out = daemon_run(daemon, "call", "demo", "sleep", "seconds=abc")
    assert out.returncode == 2 and "parameter 'seconds' of demo.sleep expects a finite number" in out.stderr
    out = daemon_run(daemon, "call", "demo", "nope")
    assert out.returncode == 1 and out.stderr.startswith("error: not_found: ")


def test_daemon_task_start_list_stop(daemon: Daemon) -> None:
    out = daemon_run(
        daemon, "--json", "tasks", "start", "scan", "task_id=1", "duration=60", "--key", "scan:1"
    )
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert (record["type"], record["key"], record["params"]["task_id"]) == ("scan", "scan:1", 1)
    task_id = str(record["id"])
    deadline = time.monotonic() + 15
    while json.loads(daemon_run(daemon, "--json", "tasks", "show", task_id).stdout)["state"] != "running":
        assert time.monotonic() < deadline, "the task never ran"
        time.sleep(0.05)
    listing = daemon_run(daemon, "tasks", "list", "--key", "scan:1").stdout
    assert re.search(rf"(?m)^\s*{task_id}\s+scan\s+scan:1\s+running\s+\d+\s", listing)
    out = daemon_run(daemon, "tasks", "stop", task_id)
    assert out.returncode == 0, out.stderr
    while (shown := json.loads(daemon_run(daemon, "--json", "tasks", "show", task_id).stdout))[
        "state"
    ] == "running":
        assert time.monotonic() < deadline + 15, "the task never stopped"
        time.sleep(0.05)
    assert (shown["state"], shown["cancel_source"]) == ("stopped", "user")


def test_daemon_health_and_types(daemon: Daemon) -> None:
    assert json.loads(daemon_run(daemon, "--json", "health").stdout)["pid"] == daemon.proc.pid
    modules = daemon_run(daemon, "modules").stdout  # demo.echo takes **params: any name
    assert re.search(
        r"(?m)^demo\.echo \(read-only\)\s+\.\.\.\s+Return the params exactly as received\.", modules
    )
    out = daemon_run(daemon, "tasks", "types")
    assert re.search(
        r"(?m)^\s*scan\s+task_id:int, duration\?:float, exit_code\?:int, fork_child\?:bool", out.stdout
    )
