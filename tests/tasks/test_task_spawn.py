"""The process a run gets is the same on every spawn path: posix_spawn, Popen (vfork) and fork.

The keeper takes posix_spawn for a plain type (a program path with a "/",
no rlimits, no user), Popen for a bare program name, fork for rlimits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from taskhelpers import CALLER, MakeManager, wait_end

from pymgr.config import TaskTypeConfig
from pymgr.keeper import spawn as _spawn
from pymgr.keeper.spawn import SpawnSpec

#: Prints what the process got: open descriptors, session, group, cwd, stdin, environment.
PROBE = (
    "import json, os\n"
    "fds = sorted(int(name) for name in os.listdir('/proc/self/fd'))\n"
    "print(json.dumps({'fds': fds, 'session_leader': os.getsid(0) == os.getpid(),"
    " 'group_leader': os.getpgid(0) == os.getpid(), 'cwd': os.getcwd(),"
    " 'stdin': os.readlink('/proc/self/fd/0'), 'env': dict(os.environ)}))\n"
)

#: The SigIgn bits of signals 32 and 33 (glibc's SIGCANCEL and SIGSETXID).
GLIBC_SIGNALS = (1 << 31) | (1 << 32)

#: How each path is chosen: by the program's name and the rlimits.
PATHS: dict[str, dict[str, Any]] = {
    "posix_spawn": {"argv": ["{python}", "-c", PROBE]},
    "popen": {"argv": [os.path.basename(os.path.realpath(__import__("sys").executable)), "-c", PROBE]},
    "fork": {"argv": ["{python}", "-c", PROBE], "rlimits": {"nofile": 1024}},
}


@pytest.mark.parametrize("path", sorted(PATHS))
async def test_the_process_is_the_same_on_every_path(
    make_manager: MakeManager, tmp_path: Path, path: str
) -> None:
    spec = dict(PATHS[path], cwd=str(tmp_path))
    if path == "popen":  # a bare name is looked up along the run's own PATH
        spec["env"] = {"PATH": os.path.dirname(os.path.realpath(__import__("sys").executable))}
    manager = make_manager(types={"probe": TaskTypeConfig.model_validate(spec)})
    ended = await wait_end(manager, (await manager.start("probe", {}, None, CALLER)).id)
    assert ended.exit_code == 0, ended.error
    seen = json.loads(Path(ended.log_path).read_text())
    assert seen["fds"] == [0, 1, 2, 3]  # 3: the listing's own descriptor
    assert seen["session_leader"] and seen["group_leader"]
    assert seen["cwd"] == str(tmp_path)
    assert seen["stdin"] == "/dev/null"
    seen["env"].pop("LC_CTYPE", None)
    assert {k: v for k, v in seen["env"].items() if k != "PATH"} == {
        "PYMGR_TASK_ID": str(ended.id),
        "PYMGR_TASK_MARKER": ended.marker,
    }


@pytest.mark.parametrize("path", sorted(PATHS))
async def test_no_signal_is_ignored_on_any_path(make_manager: MakeManager, path: str) -> None:
    # The keeper is Python: it ignores SIGPIPE and SIGXFSZ; a run must get them back at their default.
    program = "grep" if path == "popen" else "/bin/grep"
    spec: dict[str, Any] = {
        "argv": [program, "SigIgn", "/proc/self/status"],
        "env": {"PATH": "/bin:/usr/bin"},
    }
    if path == "fork":
        spec["rlimits"] = {"nofile": 1024}
    manager = make_manager(types={"probe": TaskTypeConfig.model_validate(spec)})
    ended = await wait_end(manager, (await manager.start("probe", {}, None, CALLER)).id)
    assert ended.exit_code == 0, ended.error
    ignored = int(Path(ended.log_path).read_text().split()[1], 16)
    # No signal a program can handle is left ignored. glibc's own two (32, 33) are not Python's to set:
    # posix_spawn leaves them ignored, and the other paths keep what the keeper inherited (ignored too
    # when a posix_spawn parent, e.g. make, started this test run); glibc takes them back when a
    # program uses them (threads, pthread_cancel).
    assert ignored & ~GLIBC_SIGNALS == 0
    if path == "posix_spawn":
        assert ignored == GLIBC_SIGNALS


def test_private_descriptors_makes_every_descriptor_close_on_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_spawn._PosixSpawn, "enabled", False)
    monkeypatch.setattr(_spawn._PosixSpawn, "devnull", -1)
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    cwd = os.getcwd()
    try:
        _spawn.private_descriptors()
        assert not os.get_inheritable(write_end)
        assert _spawn._PosixSpawn.enabled
        pid, popen = _spawn.spawn(SpawnSpec(argv=["/bin/true"], env={}, cwd="/"), write_end)
        assert popen is None  # the posix_spawn path
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        with pytest.raises(
            _spawn.SpawnError, match=r"^spawn failed: No such file or directory: '/nonexistent/x'$"
        ):
            _spawn.spawn(SpawnSpec(argv=["/nonexistent/x"], env={}), write_end)
        with pytest.raises(
            _spawn.SpawnError, match=r"^spawn failed: No such file or directory: '/nonexistent/d'$"
        ):
            _spawn.spawn(SpawnSpec(argv=["/bin/true"], env={}, cwd="/nonexistent/d"), write_end)
        assert os.getcwd() == cwd  # the keeper's own working directory is back after each spawn
    finally:
        os.close(read_end)
        os.close(write_end)
        if _spawn._PosixSpawn.devnull >= 0:
            os.close(_spawn._PosixSpawn.devnull)
