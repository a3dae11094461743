"""Hostile replays: parameters of commands and task types, and the policy's names for task operations.

Each test replays an attack a review confirmed, through a real daemon and its socket (or, for the
path race, the command runner with a real process and a hook between the check and the use).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pymgr import Identity
from pymgr.client import Client
from pymgr.core import paramspec
from pymgr.core.dispatch import Call, Dispatcher
from pymgr.core.registry import Registry
from pymgr.errors import ParamsInvalid, PymgrError
from pymgr.modules.commands import command_modules
from pymgr.modules.commandspec import CommandConfig
from tests.conftest import BASE_CONFIG, Daemon, curl_as_www_data, launch_daemon
from tests.tasks.survivalhelpers import keeper_pid

needs_www_data = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("curl") is None,
    reason="needs root, setpriv and curl to call as www-data (uid 33)",
)

COMMANDS = """
[commands.say]
argv = ["/bin/echo", "{word}"]
[commands.say.params]
word = { type = "str" }

[commands.greet]
argv = ["/bin/echo", "{name}"]
[commands.greet.params]
name = { type = "str", pattern = "[a-z]+" }

[commands.numbers]
argv = ["/usr/bin/printf", "%s|", "{n}", "{x}"]
[commands.numbers.params]
n = { type = "int", default = 0 }
x = { type = "float", min = 0, default = 1 }
"""

#: A param that declares it takes options.
OPTION_COMMAND = """
[commands.show]
argv = ["/usr/bin/printf", "%s|", "{word}"]
[commands.show.params]
word = { type = "str", allow_option = true }
"""


def error_of(call: Callable[[], Any]) -> PymgrError:
    with pytest.raises(PymgrError) as info:
        call()
    return info.value


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- 12.15: option-like strings ----------------------------------------------------------


def test_a_value_starting_with_a_dash_is_refused_unless_the_param_allows_options(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(BASE_CONFIG + COMMANDS)
    with Client(socket=daemon.socket) as c:
        # Before: 200, and echo took "-e" as its option (stdout "\n").
        refused = error_of(lambda: c.call("commands", "say", word="-e"))
        assert isinstance(refused, ParamsInvalid) and re.search(
            r"^bad params for commands\.say: word: Value error, must not start with '-': a program would take it for "
            r"an option; a parameter that expects one says allow_option = true \(got '-e'\)$",
            str(refused),
        )
        assert isinstance(error_of(lambda: c.start_task("echo", {"word": "--help"})), ParamsInvalid)
        assert c.tasks(type="echo") == []
        assert c.call("commands", "say", word="a-b")["stdout"] == "a-b\n"


def test_a_param_that_allows_options_passes_them_as_one_element(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(BASE_CONFIG + COMMANDS + OPTION_COMMAND)
    with Client(socket=daemon.socket) as c:
        assert c.call("commands", "show", word="-e")["stdout"] == "-e|"


# --- 17.2: patterns ------------------------------------------------------------------------


def test_a_pattern_matches_the_whole_value(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(BASE_CONFIG + COMMANDS)
    with Client(socket=daemon.socket) as c:
        for bait in ("abc; rm -rf /", "-n", "abc\n"):  # before: each ran echo
            assert isinstance(
                error_of(lambda bait=bait: c.call("commands", "greet", name=bait)), ParamsInvalid
            )
        assert c.call("commands", "greet", name="abc")["stdout"] == "abc\n"


BAD_PATTERN = r"""
[commands.grep]
argv = ["/bin/echo", "{word}"]
[commands.grep.params]
word = { type = "str", pattern = "[a-z]+\\Z" }
"""

BAD_TYPE_PATTERN = r"""
[tasks.types.peek]
argv = ["/bin/echo", "{word}"]
[tasks.types.peek.params]
word = { type = "str", pattern = "(?=a)b" }
"""


def test_a_pattern_the_validator_cannot_compile_is_a_config_error_at_start_and_on_sighup(
    tmp_path: Path,
) -> None:
    # Before: a traceback and exit 1 at start; "this is a bug" on SIGHUP.
    with pytest.raises(RuntimeError) as info:
        launch_daemon(tmp_path / "bad", BASE_CONFIG + BAD_PATTERN)
    text = str(info.value)
    assert text.startswith("daemon exited with 78:") and "Traceback" not in text
    line = next(
        n for n, t in enumerate((BASE_CONFIG + BAD_PATTERN).splitlines(), 1) if t.startswith("word = { type")
    )
    assert re.search(
        r"commands\.grep\.params\.word: Value error, `pattern` '\[a-z\]\+\\\\Z' is not a regular expression the "
        rf"validator accepts \(error: unrecognized escape sequence\); .* \(line {line}\)",
        text,
    )

    daemon = launch_daemon(tmp_path / "good", BASE_CONFIG)
    try:
        for bad in (BAD_TYPE_PATTERN, BAD_PATTERN):
            (daemon.dir / "pymgr.toml").write_text(BASE_CONFIG + bad)
            daemon.proc.send_signal(signal.SIGHUP)
            wait_for(
                lambda: daemon.log().count("reload refused") == (1 if bad is BAD_TYPE_PATTERN else 2),
                "refusal",
            )
        log = daemon.log()
        assert (
            "tasks.types.peek.params.word: Value error, `pattern` '(?=a)b' is not a regular expression" in log
        )
        assert "commands.grep.params.word: Value error, `pattern`" in log
        assert "bug" not in log and "Traceback" not in log
        with Client(socket=daemon.socket) as c:
            assert c.health() and daemon.proc.poll() is None
    finally:
        daemon.stop()


# --- 17.3: the policy's names for task operations --------------------------------------------

BORROWING_COMMANDS = """
[commands.logs]
module = "tasks"
argv = ["/usr/bin/id"]
"""

WWW_DATA_POLICY = """
state_dir = "state"
log_level = "debug"

[http]
unix_socket = "pymgr.sock"
socket_mode = "0666"
allow_world_writable = true

[[policy.rules]]
name = "root"
subjects = ["uid:0"]
actions = ["*"]

[[policy.rules]]
name = "www-data reads tasks and the scan logs"
subjects = ["user:www-data"]
actions = ["tasks.read", "tasks.logs:scan"]

[modules]
enabled = [{enabled}]

[tasks.types.scan]
argv = ["/bin/echo", "scan"]

[tasks.types.secret]
argv = ["/bin/echo", "secret"]
"""


def launch_open(base: Path, name: str, config: str) -> Daemon:
    daemon = launch_daemon(base / name, config)
    (base / name).chmod(0o755)
    return daemon


@pytest.mark.parametrize("extra", ["", "read_only = true\n"])
def test_a_command_may_not_take_the_name_of_a_module_from_code(open_dir: Path, extra: str) -> None:
    config = WWW_DATA_POLICY.replace("{enabled}", '"demo"') + BORROWING_COMMANDS + extra
    try:
        daemon = launch_open(open_dir, "d", config)
    except RuntimeError as exc:
        line = next(n for n, t in enumerate(config.splitlines(), 1) if t == 'module = "tasks"')
        assert re.search(
            r"commands\.logs\.module: Value error, module 'tasks' is the name of a module from code \(.*tasks\); "
            rf"a command needs a module name of its own \(line {line}\)",
            str(exc),
        ), str(exc)
        return
    try:  # before: it started, and www-data (tasks.read, tasks.logs:scan) ran /usr/bin/id as root
        answer = curl_as_www_data(daemon, "/v1/modules/tasks/logs") if os.geteuid() == 0 else "(not root)"
        pytest.fail(f"the daemon started with a command in module 'tasks'; www-data got {answer}")
    finally:
        daemon.stop()


BORROWER = '''
import pymgr


@pymgr.register
class Borrower(pymgr.Module):
    """A module from code that takes the name "tasks" (only one module may have a name)."""

    name = "tasks"

    @pymgr.action(read_only=True)
    async def logs(self) -> str:
        return "uid=0(root)"

    @pymgr.action(read_only=True)
    async def wipe(self) -> str:
        return "wiped"
'''


@needs_www_data
def test_task_operations_are_recognised_by_what_they_are_not_by_the_name_tasks(
    open_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plugin = open_dir / "plugins"
    plugin.mkdir()
    (plugin / "borrower.py").write_text(BORROWER)
    monkeypatch.setenv("PYTHONPATH", str(plugin))
    daemon = launch_open(open_dir, "d", WWW_DATA_POLICY.replace("{enabled}", '"borrower:Borrower"'))
    try:
        for action in ("logs", "wipe"):  # before: 200 for both ("tasks.logs:TYPE" with no type; "tasks.read")
            status, body = curl_as_www_data(daemon, f"/v1/modules/tasks/{action}")
            assert status == 403, body
            assert (status, body["error"]["message"]) == (
                403,
                f"the policy allows user:www-data (uid 33) no tasks.{action}; an admin can add it to [[policy.rules]]",
            )
    finally:
        daemon.stop()


@needs_www_data
def test_a_typed_task_operation_on_no_task_is_refused_before_it_runs(open_dir: Path) -> None:
    daemon = launch_open(open_dir, "d", WWW_DATA_POLICY.replace("{enabled}", '"tasks"'))
    try:
        with Client(socket=daemon.socket) as c:
            scan = c.start_task("scan").id
            secret = c.start_task("secret").id
        assert curl_as_www_data(daemon, "/v1/modules/tasks/logs", json.dumps({"id": scan}))[0] == 200
        status, body = curl_as_www_data(daemon, "/v1/modules/tasks/logs", json.dumps({"id": secret}))
        assert status == 403 and "no tasks.logs:secret" in body["error"]["message"]
        status, body = curl_as_www_data(daemon, "/v1/modules/tasks/logs", json.dumps({"id": secret + 1}))
        assert (status, body["error"]["message"]) == (
            404,
            f"no task with id {secret + 1}; tasks.list shows the ones that exist",
        )
    finally:
        daemon.stop()


# --- 17.9: what a path error tells --------------------------------------------------------------


def test_a_path_error_does_not_say_where_a_link_points(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    hidden = tmp_path / "hidden-dir" / "real-secret-name"
    hidden.mkdir(parents=True)
    (www / "link").symlink_to(hidden)
    config = (
        BASE_CONFIG
        + f"""
[commands.cat]
argv = ["/bin/cat", "{{file}}"]
[commands.cat.params]
file = {{ type = "path", base = "{www}" }}
"""
    )
    daemon = start_daemon(config)
    with Client(socket=daemon.socket) as c:
        refused = error_of(lambda: c.call("commands", "cat", file="link/x"))
    # Before: "must stay inside …/www (it resolves to …/hidden-dir/real-secret-name/x)".
    assert (
        isinstance(refused, ParamsInvalid)
        and "hidden-dir" not in str(refused)
        and "real-secret" not in str(refused)
    )
    assert str(refused).endswith(
        f"must stay inside {www}: it leaves it through a symbolic link (got 'link/x')"
    )


# --- 17.10: numbers -----------------------------------------------------------------------------


def test_numbers_are_strict_and_reach_argv_in_canonical_form(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(BASE_CONFIG + COMMANDS)
    with Client(socket=daemon.socket) as c:
        for bad in (True, " 7 ", 7.5, "0x7"):  # before: true and " 7 " were taken as 1 and 7
            assert isinstance(error_of(lambda bad=bad: c.call("commands", "numbers", n=bad)), ParamsInvalid)
        for bad in (True, "nan", "-1"):
            assert isinstance(error_of(lambda bad=bad: c.call("commands", "numbers", x=bad)), ParamsInvalid)
        shown = {
            (7, 2.5): "7|2.5|",
            ("7", "-0"): "7|0.0|",  # before: "-0.0" past min = 0
            ("-12", 1e-7): "-12|0.0000001|",  # before: "1e-07"
            (0, "1e16"): "0|10000000000000000.0|",
            (10**20, 3): "100000000000000000000|3.0|",
        }
        for (n, x), stdout in shown.items():
            assert c.call("commands", "numbers", n=n, x=x)["stdout"] == stdout
        assert c.call("commands", "numbers")["stdout"] == "0|1.0|"  # defaults are canonical too


# --- 17 "Also": the path race -------------------------------------------------------------------

CALLER = Identity(transport="unix", uid=0, gid=0, pid=1, user="root")


def cat_dispatcher(base: Path) -> Dispatcher:
    registry = Registry()
    config = CommandConfig(argv=["/bin/cat", "{file}"], params={"file": {"type": "path", "base": str(base)}})
    for module in command_modules({"cat": config}):
        registry.add(module)
    return Dispatcher(registry)


@pytest.fixture
def swap_site(tmp_path: Path) -> tuple[Path, Path]:
    base = tmp_path / "www"
    (base / "site").mkdir(parents=True)
    (base / "site" / "data.txt").write_text("public")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.txt").write_text("s3cret")
    return base, outside


async def test_a_directory_swapped_for_a_symlink_after_the_check_is_refused(
    swap_site: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, outside = swap_site
    real_confine = paramspec.confine

    def confine_then_swap(root: Path, value: str) -> str:
        checked = real_confine(root, value)
        (base / "site").rename(
            base / "site-old"
        )  # between the check and the use, the directory becomes a link out
        (base / "site").symlink_to(outside)
        return checked

    monkeypatch.setattr(paramspec, "confine", confine_then_swap)
    d = cat_dispatcher(base)
    # Before: cat read …/www/site/data.txt through the new link, "s3cret".
    with pytest.raises(
        ParamsInvalid,
        match=r"^bad params for commands\.cat: file: changed after it was checked: "
        r"'site' is now a symbolic link$",
    ):
        await d.call(Call("commands", "cat", {"file": "site/data.txt"}, CALLER))


async def test_the_command_gets_the_checked_file_through_its_own_descriptor(
    swap_site: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, _ = swap_site
    d = cat_dispatcher(base)
    result = await d.call(Call("commands", "cat", {"file": "site/data.txt"}, CALLER))
    assert result["stdout"] == "public"
    registry = Registry()
    config = CommandConfig(argv=["/bin/echo", "{file}"], params={"file": {"type": "path", "base": str(base)}})
    for module in command_modules({"echo": config}):
        registry.add(module)
    shown = await Dispatcher(registry).call(Call("commands", "echo", {"file": "site/new/file.txt"}, CALLER))
    # What does not exist yet is named after the descriptor of the deepest directory that does.
    assert re.fullmatch(r"/proc/self/fd/\d+/new/file\.txt\n", shown["stdout"])
    assert open_below(base) == []  # the daemon closed its descriptors once the command was spawned


def open_below(base: Path, fds: str = "/proc/self/fd") -> list[str]:
    """What this process (or the one whose ``fds`` directory is given) holds open under ``base``."""
    held = []
    for fd in os.listdir(fds):
        try:
            target = os.readlink(f"{fds}/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used, closed since
        if target == str(base) or target.startswith(f"{base}/"):
            held.append(target)
    return held


#: A task type with a path param: "seconds" later, it appends a line to the file (one run at a time).
WRITER_TYPE = """
[tasks.types.append]
argv = ["/bin/sh", "-c", "sleep \\"$2\\"; echo written >> \\"$1\\"", "sh", "{{file}}", "{{seconds}}"]
max_concurrent = 1

[tasks.types.append.params]
file = {{ type = "path", base = "{base}" }}
seconds = {{ type = "int", min = 0 }}
"""


def task_state(client: Client, task_id: int, states: tuple[str, ...]) -> dict[str, Any]:
    record: dict[str, Any] = {}

    def ended() -> bool:
        record.update(client.task(task_id).to_json())
        return record["state"] in states

    wait_for(ended, f"run {task_id} to be {' or '.join(states)}")
    return record


def test_a_directory_swapped_for_a_symlink_while_a_run_waits_is_refused_at_its_spawn(
    start_daemon: Callable[..., Daemon],
    swap_site: tuple[Path, Path],
) -> None:
    base, outside = swap_site
    daemon = start_daemon(BASE_CONFIG + WRITER_TYPE.format(base=base))
    with Client(socket=daemon.socket) as client:
        holder = client.start_task("append", {"file": "site/data.txt", "seconds": 600})
        task_state(client, holder.id, ("running",))
        queued = client.start_task(
            "append", {"file": "site/data.txt", "seconds": 0}
        )  # checked now, spawned later
        assert client.task(queued.id).state == "queued"
        (base / "site").rename(
            base / "site-old"
        )  # while it waits, the directory becomes a link out of the base
        (base / "site").symlink_to(outside)
        client.stop_task(holder.id)
        record = task_state(client, queued.id, ("failed", "succeeded"))
    # Before: the run appended to …/www/site/data.txt through the new link, outside the base.
    assert (outside / "data.txt").read_text() == "s3cret"
    assert (record["state"], record["pid"]) == ("failed", None), record
    assert record["error"] == (
        f"spawn failed: argv[4]: path '{base}/site/data.txt' changed after it was checked: "
        "'site' is now a symbolic link"
    )


@pytest.mark.parametrize("way", ["posix_spawn", "popen", "fork"])
def test_a_run_gets_the_checked_file_through_its_own_descriptor(
    start_daemon: Callable[..., Daemon],
    swap_site: tuple[Path, Path],
    way: str,
) -> None:
    base, _ = swap_site
    program = {"posix_spawn": "/bin/sh", "popen": "sh", "fork": "/bin/sh"}[
        way
    ]  # a bare name goes through Popen
    config = f"""
[tasks.types.show]
argv = ["{program}", "-c", "echo \\"$1\\" \\"$2\\"; cat -- \\"$1\\"", "sh", "{{file}}", "{{later}}"]
{"rlimits = { nofile = 1024 }" if way == "fork" else ""}

[tasks.types.show.params]
file = {{ type = "path", base = "{base}" }}
later = {{ type = "path", base = "{base}" }}
"""
    daemon = start_daemon(BASE_CONFIG + config)
    with Client(socket=daemon.socket) as client:
        for _ in range(2):  # two spawns: the first one's descriptors were closed in the keeper, not leaked
            run = client.start_task("show", {"file": "site/data.txt", "later": "site/new/out.txt"})
            record = task_state(client, run.id, ("succeeded", "failed"))
            assert record["state"] == "succeeded", record
            # The record keeps the checked paths; the process got descriptors opened beneath the base.
            assert record["argv"][4:] == [f"{base}/site/data.txt", f"{base}/site/new/out.txt"]
            shown = client.logs(run.id).decode()
            assert re.fullmatch(r"/proc/self/fd/(\d+) /proc/self/fd/(\d+)/new/out\.txt\npublic", shown), shown
    assert open_below(base, f"/proc/{keeper_pid(daemon.dir / 'state')}/fd") == []  # the keeper closed them


def test_a_restart_pins_its_paths_again(
    start_daemon: Callable[..., Daemon], swap_site: tuple[Path, Path]
) -> None:
    base, outside = swap_site
    # The first attempt appends, then swaps the directory for a link out of the base itself (race-free), and fails.
    swap = 'echo first >> "$1"; mv "$2/site" "$2/site-old" && ln -s "$3" "$2/site"; exit 1'
    config = f"""
[tasks.types.again]
argv = ["/bin/sh", "-c", '{swap}', "sh", "{{file}}", "{base}", "{outside}"]
restart = "on-failure"
restart_delay_s = 0.1
max_attempts = 2

[tasks.types.again.params]
file = {{ type = "path", base = "{base}" }}
"""
    daemon = start_daemon(BASE_CONFIG + config)
    with Client(socket=daemon.socket) as client:
        first = client.start_task("again", {"file": "site/data.txt"})
        task_state(client, first.id, ("failed",))
        retry: dict[str, Any] = {}
        wait_for(
            lambda: bool(
                retry.update(next((r.to_json() for r in client.tasks() if r.retry_of == first.id), {}))
                or retry.get("state") in ("failed", "succeeded")
            ),
            "the restart to end",
        )
    # Before: the restart followed the new link and appended to the file outside the base.
    assert (outside / "data.txt").read_text() == "s3cret"
    assert (base / "site-old" / "data.txt").read_text() == "publicfirst\n"
    assert (retry["state"], retry["pid"], retry["attempt"]) == ("failed", None, 2), retry
    assert retry["error"].startswith(
        f"spawn failed: argv[4]: path '{base}/site/data.txt' changed after it was checked: "
        "'site' is now a symbolic link"
    ), retry
