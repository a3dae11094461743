"""Task types from config: parameter models, argv templates, and no shell anywhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from taskhelpers import CALLER, py, wait_end

from pymgr.config import ConfigError, TasksConfig, TaskTypeConfig
from pymgr.errors import ParamsInvalid
from pymgr.tasks.manager import TaskManager
from pymgr.tasks.states import TaskState
from pymgr.tasks.tasktypes import compile_type, compile_types, render_element, render_value


def type_config(argv: list[str], **params: dict[str, Any]) -> TaskTypeConfig:
    return TaskTypeConfig.model_validate({"argv": argv, "params": params})


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-7, "-7"),
        (2.5, "2.5"),
        (30.0, "30.0"),
        ("a b", "a b"),
        (None, ""),
        (-0.0, "0.0"),
        (1e-7, "0.0000001"),
        (1e16, "10000000000000000.0"),
        (-1.5e-5, "-0.000015"),
        (0.1, "0.1"),
        (10**20, "100000000000000000000"),
    ],
)
def test_render_value(value: Any, text: str) -> None:
    assert render_value(value) == text


@pytest.mark.parametrize(
    ("element", "text"),
    [
        ("{n}", "7"),
        ("--n={n}", "--n=7"),
        ("{n}{n}", "77"),
        ("{python}", sys.executable),
        ("{}", "{}"),
        ("{N}", "{N}"),
        ("{{n}}", "{7}"),
        ("{n.__class__}", "{n.__class__}"),
        ("{0}", "{0}"),
        ("plain", "plain"),
    ],
)
def test_render_element(element: str, text: str) -> None:
    assert render_element(element, {"n": "7", "python": sys.executable}) == text


def test_substitution_is_one_pass() -> None:
    """A value that looks like a placeholder stays literal."""
    assert render_element("{a}", {"a": "{python}", "python": "/usr/bin/python3"}) == "{python}"


def test_render_argv_uses_validated_params() -> None:
    t = compile_type(
        "t",
        type_config(
            ["{python}", "x", "{n}", "{flag}", "{ratio}"],
            n={"type": "int"},
            flag={"type": "bool", "default": False},
            ratio={"type": "float", "default": 1},
        ),
        TasksConfig(stop_grace_s=5.0),
    )
    params = t.params_model.model_validate({"n": "3", "flag": True, "ratio": 2})
    assert t.render_argv(params) == [sys.executable, "x", "3", "true", "2.0"]
    # A default is validated like a sent value, so it renders in the same canonical form.
    assert t.render_argv(t.params_model.model_validate({"n": 3}))[3:] == ["false", "1.0"]


def test_spawn_pins_name_each_checked_path_and_the_text_around_it(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    t = compile_type(
        "t",
        type_config(
            ["/bin/cp", "--from={src}:{dst}", "{n}", "{dst}", "{opt}"],
            src={"type": "path", "base": str(tmp_path)},
            dst={"type": "path", "base": str(tmp_path)},
            opt={"type": "path", "base": str(tmp_path), "required": False},
            n={"type": "int"},
        ),
        TasksConfig(stop_grace_s=5.0),
    )
    params = t.params_model.model_validate({"src": "a", "dst": "b", "n": 3}).model_dump(mode="json")
    argv = t.render_argv(t.params_model.model_validate(params))
    src, dst = (
        {"base": str(tmp_path), "path": f"{tmp_path}/a"},
        {"base": str(tmp_path), "path": f"{tmp_path}/b"},
    )
    # An unset optional path is "" and no pin; an int stays text.
    assert t.spawn_pins(params, argv) == [
        {"index": 1, "parts": ["--from=", src, ":", dst]},
        {"index": 3, "parts": [dst]},
    ]
    # A run whose argv the type no longer renders (changed since it was queued) keeps its text.
    assert t.spawn_pins(params, [*argv[:3], "other", argv[4]]) == []
    assert (
        compile_type("u", type_config(["/bin/true", "{n}"], n={"type": "int"}), TasksConfig()).spawn_pins(
            {"n": 1}, ["/bin/true", "1"]
        )
        == []
    )


def test_unknown_placeholder_is_a_config_error() -> None:
    config = TasksConfig(
        types={"scan": type_config(["{python}", "--id={task_idd}"], task_id={"type": "int"})}
    )
    with pytest.raises(
        ConfigError,
        match=r"^\[tasks\.types\.scan\] argv\[1\] '--id=\{task_idd\}': unknown placeholder '\{task_idd\}'; known: \{python\}, \{task_id\}$",
    ):
        compile_types(config)


def test_unknown_placeholder_fails_manager_start_up(tmp_path: Path) -> None:
    config = TasksConfig(types={"t": type_config(["{nope}"])})
    with pytest.raises(ConfigError, match=r"unknown placeholder '\{nope\}'"):
        TaskManager(config, tmp_path)


def test_param_named_python_is_reserved() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^\[tasks\.types\.t\] params: 'python' is reserved for the daemon's interpreter; rename the parameter$",
    ):
        compile_type("t", type_config(["x"], python={"type": "str"}), TasksConfig())


def test_type_grace_overrides_default() -> None:
    own = TaskTypeConfig.model_validate({"argv": ["x"], "stop_grace_s": 0.5})
    assert compile_type("t", own, TasksConfig(stop_grace_s=5.0)).stop_grace_s == 0.5
    assert compile_type("t", type_config(["x"]), TasksConfig(stop_grace_s=5.0)).stop_grace_s == 5.0


def test_describe_shows_the_params_schema() -> None:
    t = compile_type(
        "t", type_config(["x", "{n}"], n={"type": "int", "min": 0, "doc": "how many"}), TasksConfig()
    )
    described = t.describe()
    assert described["name"] == "t"
    assert described["params"]["properties"]["n"] == {
        "description": "how many",
        "minimum": 0,
        "title": "N",
        "type": "integer",
    }
    assert described["params"]["required"] == ["n"]


def test_the_params_schema_is_made_once_and_each_caller_gets_its_own_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = compile_type("t", type_config(["x", "{n}"], n={"type": "int"}), TasksConfig())
    first = t.describe()["params"]
    made: list[object] = []
    monkeypatch.setattr(t.params_model, "model_json_schema", lambda *a, **k: made.append(a) or {})
    first["properties"].clear()  # a caller's change stays its own
    assert t.describe()["params"]["properties"] == {"n": {"title": "N", "type": "integer"}}
    assert made == []  # the second describe did not build it again


INJECTION = "1; touch {marker} && echo pwned $(id) `id` | cat > {marker}"


async def test_param_reaches_argv_as_one_literal_argument(manager: TaskManager, tmp_path: Path) -> None:
    """The echo type prints its argv as JSON: the value arrives whole, nothing runs."""
    marker = tmp_path / "injected"
    value = INJECTION.format(marker=marker)
    record = await manager.start("echo", {"arg": value}, None, CALLER)
    assert record.argv == [sys.executable, "-c", record.argv[2], value, f"--arg={value}"]
    record = await wait_end(manager, record.id)
    assert record.state is TaskState.SUCCEEDED
    assert json.loads(Path(record.log_path).read_text()) == [value, f"--arg={value}"]
    assert not marker.exists()


async def test_pattern_rejects_shell_metacharacters(make_manager: Any) -> None:
    manager = make_manager(
        types={
            "safe": TaskTypeConfig.model_validate(
                {
                    "argv": py("pass", "{host}"),
                    "params": {"host": {"type": "str", "pattern": r"^[a-z0-9.-]+$"}},
                }
            )
        }
    )
    with pytest.raises(
        ParamsInvalid,
        match=r"^bad params for task type 'safe': host: String should match pattern '\^\(\?:\^\[a-z0-9\.-\]\+\$\)\$' \(got '1; touch /tmp/x'\)$",
    ):
        await manager.start("safe", {"host": "1; touch /tmp/x"}, None, CALLER)
    assert manager.list_runs() == []
