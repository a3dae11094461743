"""Commands from the config as actions: no shell, typed params, confined paths, caps, timeouts, users."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pymgr import Identity
from pymgr.config import ConfigError
from pymgr.core.dispatch import Call, Dispatcher
from pymgr.core.registry import Registry
from pymgr.errors import ActionFailed, ParamsInvalid
from pymgr.modules.commands import command_modules
from pymgr.modules.commandspec import CommandConfig

CALLER = Identity(transport="unix", uid=0, gid=0, pid=1, user="root")
SHELL_BAIT = [
    "; rm -rf /",
    "$(id)",
    "`id`",
    "a && b",
    "x | y",
    "> /etc/passwd",
    "'\"",
    "*",
    "~",
    "a\nb",
    "-rf",
    "--help",
]


def dispatcher(**commands: dict[str, Any]) -> Dispatcher:
    registry = Registry()
    for module in command_modules({name: CommandConfig(**spec) for name, spec in commands.items()}):
        registry.add(module)
    return Dispatcher(registry)


async def run(d: Dispatcher, name: str, module: str = "commands", **params: Any) -> Any:
    return await d.call(Call(module, name, params, CALLER))


@pytest.fixture
def base(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "site").mkdir(parents=True)
    (root / "site" / "index.html").write_text("hi")
    (tmp_path / "secret.txt").write_text("s3cret")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    (root / "escape-dir").symlink_to(tmp_path)
    (root / "inside").symlink_to(root / "site" / "index.html")
    return root


def printf_command(**params: dict[str, Any]) -> dict[str, Any]:
    argv = ["/usr/bin/printf", "%s|"] + ["{" + name + "}" for name in params]
    return {"argv": argv, "params": params}


async def test_each_param_is_one_argv_element_whatever_it_holds() -> None:
    d = dispatcher(
        show=printf_command(
            word={"type": "str", "allow_option": True}, n={"type": "int", "min": 0, "max": 10}
        )
    )
    for bait in SHELL_BAIT:
        result = await run(d, "show", word=bait, n=3)
        assert result["stdout"] == f"{bait}|3|" and result["exit_code"] == 0 and result["truncated"] is False


@pytest.mark.parametrize(
    ("spec", "value", "message"),
    [
        ({"type": "int", "min": 1, "max": 65535}, "22; reboot", r"must be a whole number in decimal digits"),
        ({"type": "int", "min": 1, "max": 65535}, 0, r"greater than or equal to 1"),
        (
            {"type": "enum", "choices": ["nginx", "sshd"]},
            "nginx; reboot",
            r"Input should be 'nginx' or 'sshd'",
        ),
        ({"type": "str", "pattern": "^[a-z]+$"}, "abc def", r"String should match pattern"),
        ({"type": "str"}, "a\x00b", r"must not contain a NUL byte"),
        ({"type": "str", "max_length": 4}, "abcde", r"at most 4 characters"),
    ],
)
async def test_typed_params_refuse_bad_values(spec: dict[str, Any], value: Any, message: str) -> None:
    d = dispatcher(show=printf_command(p=spec))
    with pytest.raises(ParamsInvalid, match=rf"^bad params for commands\.show: p: .*{message}"):
        await run(d, "show", p=value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("../secret.txt", r"must not contain '\.\.'"),
        ("site/../../secret.txt", r"must not contain '\.\.'"),
        ("site/..", r"must not contain '\.\.'"),
        ("a\x00b", r"must not contain a NUL byte"),
        ("", r"must be a path, not empty"),
        (
            "/etc/passwd",
            r"must stay inside .*www: an absolute path must start with it \(got '/etc/passwd'\)$",
        ),
        ("escape", r"must stay inside .*www: it leaves it through a symbolic link \(got 'escape'\)$"),
        ("escape-dir/secret.txt", r"must stay inside"),
    ],
)
async def test_path_params_stay_inside_their_directory(base: Path, value: str, message: str) -> None:
    d = dispatcher(
        cat={"argv": ["/bin/cat", "{file}"], "params": {"file": {"type": "path", "base": str(base)}}}
    )
    with pytest.raises(ParamsInvalid, match=rf"^bad params for commands\.cat: file: Value error, {message}"):
        await run(d, "cat", file=value)


async def test_path_params_inside_resolve_to_absolute_paths(base: Path) -> None:
    d = dispatcher(
        cat={"argv": ["/bin/cat", "{file}"], "params": {"file": {"type": "path", "base": str(base)}}}
    )
    assert (await run(d, "cat", file="site/index.html"))["stdout"] == "hi"
    assert (await run(d, "cat", file="inside"))["stdout"] == "hi"  # a symlink that stays inside is fine
    assert (await run(d, "cat", file=str(base / "site" / "index.html")))["stdout"] == "hi"
    missing = await run(d, "cat", file="site/nope.html")
    assert missing["exit_code"] == 1 and "No such file" in missing["stderr"]


async def test_output_is_capped_and_counted() -> None:
    d = dispatcher(zeros={"argv": ["/usr/bin/head", "-c", "100000", "/dev/zero"], "max_output_bytes": 1000})
    result = await run(d, "zeros")
    assert (len(result["stdout"]), result["stdout_bytes"], result["truncated"]) == (1000, 100000, True)
    exact = dispatcher(zeros={"argv": ["/usr/bin/head", "-c", "1000", "/dev/zero"], "max_output_bytes": 1000})
    assert (await run(exact, "zeros"))["truncated"] is False


async def test_timeout_stops_the_whole_group() -> None:
    d = dispatcher(slow={"argv": ["/bin/sleep", "30"], "timeout_s": 0.3})
    started = time.monotonic()
    result = await run(d, "slow")
    assert (result["timed_out"], result["signal"], result["exit_code"]) == (True, "SIGTERM", None)
    assert time.monotonic() - started < 5


async def test_the_environment_is_only_what_is_declared_and_exit_codes_are_results(tmp_path: Path) -> None:
    d = dispatcher(
        env={"argv": ["/usr/bin/env"]},
        declared={"argv": ["/usr/bin/env"], "env": {"LANG": "C.UTF-8"}},
        where={"argv": ["/bin/pwd"], "cwd": str(tmp_path)},
        fail={"argv": ["/bin/false"]},
    )
    assert (await run(d, "env"))["stdout"] == ""
    assert (await run(d, "declared"))["stdout"] == "LANG=C.UTF-8\n"
    assert (await run(d, "where"))["stdout"].strip() == str(tmp_path)
    assert (await run(d, "fail"))["exit_code"] == 1


async def test_commands_run_concurrently_without_blocking_the_loop() -> None:
    d = dispatcher(nap={"argv": ["/bin/sleep", "0.5"]})
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    results = await asyncio.gather(*(run(d, "nap") for _ in range(5)))
    ticker.cancel()
    assert all(r["exit_code"] == 0 for r in results)
    assert time.monotonic() - started < 2.0 and ticks > 20


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as another user")
async def test_run_as_a_user() -> None:
    d = dispatcher(ident={"argv": ["/usr/bin/id", "-u"], "user": "nobody"})
    assert (await run(d, "ident"))["stdout"].strip() == "65534"


async def test_a_module_name_from_config_and_the_schema_clients_see() -> None:
    d = dispatcher(
        reload={"module": "nginx", "argv": ["/bin/true"], "doc": "Reload nginx.", "dangerous": True},
        port={
            "module": "nginx",
            "argv": ["/bin/echo", "{port}"],
            "params": {"port": {"type": "int", "min": 1, "max": 65535, "doc": "TCP port"}},
        },
    )
    [module] = d.registry.describe()
    assert module["name"] == "nginx" and [a["name"] for a in module["actions"]] == ["port", "reload"]
    assert [a["dangerous"] for a in module["actions"]] == [False, True]
    schema = module["actions"][0]["params"]
    assert schema["properties"]["port"] == {
        "description": "TCP port",
        "maximum": 65535,
        "minimum": 1,
        "title": "Port",
        "type": "integer",
    }
    assert schema["required"] == ["port"] and "pymgr_caller" not in schema["properties"]
    assert (await run(d, "port", module="nginx", port="8080"))["stdout"] == "8080\n"
    with pytest.raises(ParamsInvalid, match=r"Extra inputs are not permitted"):
        await run(d, "port", module="nginx", port=1, argv="/bin/sh")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"argv": ["bin/echo"]},
            r"argv\[0\] must be the executable's absolute path, without placeholders, not 'bin/echo'",
        ),
        (
            {"argv": ["/{x}"], "params": {"x": {"type": "str"}}},
            r"argv\[0\] must be the executable's absolute path",
        ),
        (
            {"argv": ["/bin/id"], "module": "tasks"},
            r"module 'tasks' is the name of a module from code \(SCAN_MODULE, audit, demo, "
            r"metrics, tasks\); a command needs a module name of its own",
        ),
        (
            {"argv": ["/bin/id"], "module": "metrics", "read_only": True},
            r"module 'metrics' is the name of a module from code",
        ),
    ],
)
def test_config_model_errors(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CommandConfig(**spec)


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        (
            "x",
            {"argv": ["/nonexistent/tool"]},
            r"^\[commands\.x\] argv\[0\] '/nonexistent/tool' is not an executable file$",
        ),
        (
            "x",
            {"argv": ["/etc/passwd"]},
            r"^\[commands\.x\] argv\[0\] '/etc/passwd' is not an executable file$",
        ),
        (
            "x",
            {"argv": ["/bin/echo", "{y}"]},
            r"^\[commands\.x\] argv\[1\] '\{y\}': unknown placeholder '\{y\}'; known: \(no params\)$",
        ),
        (
            "x",
            {"argv": ["/bin/echo"], "user": "no-such-user-xyz"},
            r"^\[commands\.x\] user 'no-such-user-xyz' does not exist",
        ),
        (
            "x",
            {"argv": ["/bin/echo"], "params": {"pymgr_caller": {"type": "str"}}},
            r"'pymgr_caller' is reserved",
        ),
        ("a b", {"argv": ["/bin/echo"]}, r"^\[commands\.a b\]: a command name is letters, digits"),
    ],
)
def test_bad_commands_stop_start_up(name: str, spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        command_modules({name: CommandConfig(**spec)})


async def test_a_program_that_cannot_start_is_action_failed(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/nonexistent/interpreter\n")
    tool.chmod(0o755)
    d = dispatcher(broken={"argv": [str(tool)]})
    with pytest.raises(
        ActionFailed, match=rf"^command commands\.broken could not start {tool}: No such file or directory$"
    ):
        await run(d, "broken")


def test_the_reserved_names_are_those_pymgr_registers() -> None:
    """pymgr's own entry points (pyproject.toml) are reserved, even with no package metadata."""
    import tomllib

    from pymgr.core.loader import BUILTIN_MODULE_NAMES, reserved_module_names

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert set(pyproject["project"]["entry-points"]["pymgr.modules"]) == BUILTIN_MODULE_NAMES
    assert BUILTIN_MODULE_NAMES <= reserved_module_names()
