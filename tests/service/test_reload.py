"""SIGHUP reload: what a reload applies, what needs a restart, and a live daemon that keeps its work."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pymgr import errors
from pymgr.client import Client
from pymgr.config import Config, TasksConfig, load_config
from pymgr.core.dispatch import Dispatcher
from pymgr.core.registry import ModuleContext, Registry
from pymgr.modules.demo import Demo
from pymgr.service.hooks import Runtime
from pymgr.service.reload import Reloader, merge, restart_needed
from tests.conftest import BASE_CONFIG, Daemon
from tests.service.helpers import wait_for


def _config(**sections: Any) -> Config:
    return Config.model_validate(sections)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"http": {"tcp": "127.0.0.1:0"}}, ["http.tcp"]),
        ({"legacy": {"port": 7000}}, ["legacy.port"]),
        ({"state_dir": "/srv/pymgr"}, ["state_dir"]),
        ({"modules": {"enabled": ["demo"]}}, ["modules.enabled"]),
        ({"modules": {"settings": {"demo": {"a": 1}}}}, []),
        ({"tasks": {"stop_grace_s": 1}}, []),
        ({"log_level": "debug"}, []),
        ({"service": {"hardening": "off"}}, []),  # read by `pymgr service install`, not by the daemon
    ],
)
def test_restart_needed_names_the_changed_keys(change: dict[str, Any], expected: list[str]) -> None:
    assert restart_needed(Config(), _config(**change)) == expected


def test_merge_takes_the_reloadable_keys_and_keeps_the_rest() -> None:
    old = _config(http={"tcp": "127.0.0.1:1"})
    new = _config(
        http={"tcp": "127.0.0.1:2"}, log_level="debug", modules={"enabled": ["demo"], "settings": {"x": {}}}
    )
    merged = merge(old, new)
    assert merged.http.tcp == "127.0.0.1:1" and merged.log_level == "debug"
    assert merged.modules.enabled == old.modules.enabled and merged.modules.settings == {"x": {}}


class _FakeTasks:
    """The one TaskManager method a reload calls."""

    def __init__(self) -> None:
        self.reloaded: list[TasksConfig] = []

    def reload(self, config: TasksConfig) -> list[str]:
        self.reloaded.append(config)
        return [f"types now {', '.join(sorted(config.types))}"]


def _runtime(config: Config) -> tuple[Runtime, Demo]:
    registry = Registry()
    demo = Demo(ModuleContext(settings={"greeting": "old"}))
    registry.add(demo)
    return Runtime(config=config, tasks=_FakeTasks(), dispatcher=Dispatcher(registry)), demo  # type: ignore[arg-type]


def test_a_reload_applies_settings_and_task_types(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pymgr.toml"
    path.write_text('[modules.settings.demo]\ngreeting = "old"\n')
    runtime, demo = _runtime(load_config(path))
    path.write_text(
        'log_level = "warning"\n[modules.settings.demo]\ngreeting = "new"\n'
        '[tasks.types.hello]\nargv = ["/bin/echo", "hello"]\n[http]\ntcp = "127.0.0.1:0"\n'
    )
    result = Reloader(path, runtime).reload()
    assert result.applied and result.restart == ["http.tcp"]
    assert result.changes == [
        "tasks: types now hello",
        "modules.settings.demo changed",
        "log_level info -> warning",
    ]
    assert demo.context.settings == {"greeting": "new"}
    assert runtime.config.http.tcp is None and sorted(runtime.config.tasks.types) == ["hello"]
    assert re.search(r"changes http\.tcp: these take effect only after a restart", caplog.text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[http\n", r"is not valid TOML"),
        ("[tasks]\nstop_grace_s = -1\n", r"tasks\.stop_grace_s: Input should be greater than or equal to 0"),
        ('[tasks.types.bad]\nargv = ["{nope}"]\n', r"unknown placeholder '\{nope\}'"),
    ],
)
def test_a_bad_config_is_refused_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, reason: str
) -> None:
    path = tmp_path / "pymgr.toml"
    path.write_text("")
    before = load_config(path)
    path.write_text(text)
    runtime, demo = _runtime(before)
    result = Reloader(path, runtime).reload()
    assert not result.applied and re.search(reason, result.error or "")
    assert runtime.config is before and runtime.tasks.reloaded == []  # type: ignore[attr-defined]
    assert demo.context.settings == {"greeting": "old"}
    assert re.search(r"reload refused, the daemon keeps its current config: ", caplog.text)


# -- end to end: a live daemon keeps its connections and tasks ------------------------

RELOADED = (
    BASE_CONFIG
    + """
[modules.settings.demo]
greeting = "reloaded"

[tasks.types.extra]
argv = ["/bin/echo", "extra"]
"""
)


def test_sighup_keeps_a_request_and_a_task_and_shows_a_new_type(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()
    config = daemon.dir / "pymgr.toml"
    with Client(socket=daemon.socket) as client:
        task = client.start_task("scan", {"task_id": 1, "duration": 30})
        wait_for(lambda: client.task(task.id).state == "running", what="task running")
        slow: dict[str, Any] = {}
        request = threading.Thread(target=lambda: slow.update(client_call_sleep(daemon.socket)))
        request.start()
        time.sleep(0.3)  # the 1.5 s request is now inside the daemon; it is asserted in flight below

        config.write_text(RELOADED.replace("read_timeout_s = 2", "read_timeout_s = 3"))
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded from" in daemon.log(), what="reload logged")
        assert request.is_alive()  # the reload happened while the request was in flight
        request.join(timeout=10)
        assert slow == {"result": {"slept_s": 1.5}}  # the in-flight request finished normally
        assert client.task(task.id).state == "running"  # the task was not touched
        assert "extra" in [t.name for t in client.task_types()]
        log = daemon.log()
        assert re.search(r"config reloaded from \S+: tasks: .*extra.*; modules\.settings\.demo changed", log)
        assert re.search(r"changes legacy\.read_timeout_s: these take effect only after a restart", log)

        config.write_text(RELOADED + '\n[tasks.types.broken]\nargv = ["{missing}"]\n')
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in daemon.log(), what="refusal logged")
        assert re.search(
            r"reload refused, the daemon keeps its current config: .*unknown placeholder '\{missing\}'",
            daemon.log(),
        )
        assert "extra" in [t.name for t in client.task_types()]
        assert client.task(task.id).state == "running"
        client.stop_task(task.id)
    assert daemon.stop() == 0


def client_call_sleep(socket: Path) -> dict[str, Any]:
    with Client(socket=socket, timeout_s=20) as client:
        return {"result": client.call("demo", "sleep", seconds=1.5)}


# -- the policy: swapped live, or the whole reload refused -----------------------------

POLICY_BASE = (
    BASE_CONFIG.split("# Every caller may do everything")[0]
    + """
[modules]
enabled = ["demo", "tasks", "SCAN_MODULE"]

[tasks]
stop_grace_s = 1
keeper_idle_exit_s = 1
"""
)
ECHO_ONLY = '\n[[policy.rules]]\nname = "echo"\nsubjects = ["any"]\nactions = ["demo.echo"]\n'
WHOAMI_ONLY = '\n[[policy.rules]]\nname = "whoami"\nsubjects = ["any"]\nactions = ["demo.whoami"]\n'


def test_sighup_swaps_the_policy_and_refuses_one_that_does_not_build(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(POLICY_BASE + ECHO_ONLY)
    config = daemon.dir / "pymgr.toml"
    with Client(socket=daemon.socket) as client:
        assert client.call("demo", "echo", a=1) == {"a": 1}
        with pytest.raises(errors.Forbidden):
            client.call("demo", "whoami")

        config.write_text(POLICY_BASE + WHOAMI_ONLY)
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "policy: replaced (1 rules -> 1 rules)" in daemon.log(), what="policy reload logged")
        assert client.call("demo", "whoami")["transport"] == "unix"  # the same connection, the new policy
        with pytest.raises(errors.Forbidden):
            client.call("demo", "echo", a=1)

        unknown_key = WHOAMI_ONLY.replace('subjects = ["any"]', 'subjects = ["key:nobody"]') + ECHO_ONLY
        config.write_text(POLICY_BASE + unknown_key)
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in daemon.log(), what="refusal logged")
        assert re.search(
            r"reload refused, the daemon keeps its current config: \[policy\]: .*nobody", daemon.log()
        )
        assert client.call("demo", "whoami")["transport"] == "unix"  # the old policy stays in force
        with pytest.raises(errors.Forbidden):
            client.call("demo", "echo", a=1)
    assert daemon.stop() == 0


def test_a_dispatcher_without_a_policy_factory_refuses_a_policy_change(tmp_path: Path) -> None:
    from pymgr.auth.pipeline import GuardedDispatcher

    path = tmp_path / "pymgr.toml"
    path.write_text("")
    registry = Registry()
    registry.add(Demo(ModuleContext(settings={})))
    dispatcher = GuardedDispatcher(registry, policy=None, auditor=None, max_params_bytes=1000)
    runtime = Runtime(config=load_config(path), tasks=_FakeTasks(), dispatcher=dispatcher)  # type: ignore[arg-type]
    path.write_text(ECHO_ONLY)
    result = Reloader(path, runtime).reload()
    assert not result.applied and re.search(
        r"^\[policy\]: .*restart to change \[policy\]", result.error or ""
    )
    assert dispatcher.policy is None
