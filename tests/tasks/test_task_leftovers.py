"""A run whose first process exits on its own: what it left running is stopped too (kill_leftovers)."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from taskhelpers import CALLER, MakeManager, gone, py, wait_end

from pymgr.config import TaskTypeConfig
from pymgr.keeper.proctree import ProcRef, leftovers, run_marker, start_time
from pymgr.tasks.states import TaskState

#: Leaves three processes behind and exits 3: a child in its group, a grandchild under that child,
#: and a double-forked daemon in a session of its own with stdio on /dev/null; prints their pids.
LEAVER = py(
    "import os, subprocess, sys\n"
    'code = \'import subprocess, sys, time; g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]); '
    "print(g.pid, flush=True); time.sleep(600)'\n"
    "child = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE)\n"
    "grandchild = int(child.stdout.readline())\n"
    "daemon = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True,\n"
    "                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print('left', child.pid, grandchild, daemon.pid, flush=True)\n"
    "sys.exit(3)\n"
)

#: Leaves a child that ignores SIGTERM (once it said so): the leftovers' stop needs SIGKILL after the grace.
STUBBORN_LEAVER = py(
    "import subprocess, sys\n"
    'code = \'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print("armed", flush=True); '
    "time.sleep(600)'\n"
    "child = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE)\n"
    "assert child.stdout.readline() == b'armed\\n'\n"
    "print('left', child.pid, flush=True)\n"
)


def left_pids(log_path: str) -> list[int]:
    match = re.search(r"^left ([\d ]+)$", Path(log_path).read_text(), re.M)
    assert match is not None, Path(log_path).read_text()
    return [int(pid) for pid in match.group(1).split()]


def all_gone(pids: list[int], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not all(gone(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


async def test_what_an_exited_run_left_running_is_stopped_and_named_in_its_log(
    make_manager: MakeManager,
) -> None:
    manager = make_manager(types={"leaver": TaskTypeConfig(argv=LEAVER)})
    record = await manager.start("leaver", {}, None, CALLER)
    ended = await wait_end(manager, record.id)
    # The leader's own outcome: failed with its exit code, not "stopped" (nobody stopped the run).
    assert (ended.state, ended.exit_code, ended.signal, ended.cancel_source) == (
        TaskState.FAILED,
        3,
        None,
        None,
    )
    assert ended.error is None
    child, grandchild, daemon = left_pids(ended.log_path)
    assert all_gone(
        [child, grandchild, daemon]
    )  # in its group, under that, in a session of its own: all ours
    log = Path(ended.log_path).read_text()
    assert re.search(
        r"pymgr: the run's first process exited; stopping the 3 process\(es\) it left running", log
    ), log


async def test_the_run_ends_only_once_its_leftovers_are_gone_sigkill_after_grace(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    manager = make_manager(types={"stubborn": TaskTypeConfig(argv=STUBBORN_LEAVER, stop_grace_s=0.5)})
    record = await manager.start("stubborn", {}, None, CALLER)
    ended = await wait_end(manager, record.id)
    (child,) = left_pids(ended.log_path)
    assert gone(child)  # SIGTERM ignored: SIGKILL after 0.5 s, before the run was reported ended
    assert (ended.state, ended.exit_code) == (TaskState.SUCCEEDED, 0)
    assert "sending SIGKILL to 1 process(es)" in (tmp_path / "state" / "run" / "keeper.log").read_text()


async def test_a_deadline_during_the_leftovers_stop_is_not_the_outcome(make_manager: MakeManager) -> None:
    # The leader is done well within its 3 s (two interpreter starts, under a second even on a loaded
    # box); its stubborn leftover takes the whole 5 s grace, so the deadline passes meanwhile.
    stubborn = TaskTypeConfig(argv=STUBBORN_LEAVER, stop_grace_s=5.0, timeout_s=3.0)
    manager = make_manager(types={"stubborn": stubborn})
    record = await manager.start("stubborn", {}, None, CALLER)
    ended = await wait_end(manager, record.id)
    assert gone(left_pids(ended.log_path)[0])
    assert (ended.state, ended.exit_code) == (TaskState.SUCCEEDED, 0)  # not timed_out: the leader was in time
    assert ended.cancel_source == "deadline"  # the deadline did fire meanwhile, and is on the record


def late_forker(pid_file: Path) -> list[str]:
    """Leaves a child that, when SIGTERM comes, starts a grandchild (its pid into ``pid_file``) and exits."""
    child = (
        "import os, signal, subprocess, sys, time\n"
        "def bye(*_):\n"
        "    g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"    open({str(pid_file)!r}, 'w').write(str(g.pid)); os._exit(0)\n"
        "signal.signal(signal.SIGTERM, bye); print('armed', flush=True); time.sleep(600)\n"
    )
    return py(
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE)\n"
        "assert child.stdout.readline() == b'armed\\n'\n"
        "print('left', child.pid, flush=True)\n"
    )


async def test_a_leftover_forking_as_it_is_stopped_leaves_nothing_behind(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchild.pid"
    manager = make_manager(types={"late": TaskTypeConfig(argv=late_forker(pid_file))})
    record = await manager.start("late", {}, None, CALLER)
    ended = await wait_end(manager, record.id)
    (child,) = left_pids(ended.log_path)
    assert gone(child) and ended.state is TaskState.SUCCEEDED
    grandchild = int(pid_file.read_text())  # forked after the first look, when SIGTERM reached its parent
    assert all_gone([grandchild], timeout_s=1.0)  # the look again caught it before the run was reported ended


async def test_kill_leftovers_false_leaves_them(make_manager: MakeManager) -> None:
    manager = make_manager(types={"leaver": TaskTypeConfig(argv=LEAVER, kill_leftovers=False)})
    record = await manager.start("leaver", {}, None, CALLER)
    ended = await wait_end(manager, record.id)
    pids = left_pids(ended.log_path)
    try:
        time.sleep(0.5)
        assert not any(gone(pid) for pid in pids)
        assert "pymgr: the run's first process exited" not in Path(ended.log_path).read_text()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)


async def test_a_run_that_leaves_nothing_ends_as_before(make_manager: MakeManager) -> None:
    manager = make_manager()
    record = await manager.start("exit", {"code": 0}, None, CALLER)
    ended = await wait_end(manager, record.id)
    assert (ended.state, ended.error) == (TaskState.SUCCEEDED, None)
    assert "pymgr:" not in (Path(ended.log_path).read_text() if Path(ended.log_path).exists() else "")


def test_leftovers_are_the_callers_children_in_the_runs_group_or_marked() -> None:
    # The test process stands for the keeper: its children are its own (no subreaper needed here).
    import subprocess
    import sys

    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    marker = run_marker(9, "t" * 32)
    leader = subprocess.Popen(sleep, env={}, process_group=0)  # a group of its own, as a run's leader
    in_group = subprocess.Popen(sleep, env={}, process_group=leader.pid)  # unmarked, in the leader's group
    marked = subprocess.Popen(sleep, env=marker, start_new_session=True)  # escaped the group, marked
    stranger = subprocess.Popen(sleep, env={}, start_new_session=True)  # neither
    try:
        ref = ProcRef(leader.pid, 0)  # start time 0: every child is new enough
        assert start_time(in_group.pid) is not None
        found = leftovers(ref, marker, leaders=[leader.pid])
        assert {r.pid for r in found} == {in_group.pid, marked.pid}  # never the leader, never the stranger
        assert leftovers(ref, marker, leaders=[leader.pid, marked.pid]) == {
            r for r in found if r.pid == in_group.pid
        }
        assert (
            leftovers(ProcRef(leader.pid, 2**62), marker, leaders=[]) == set()
        )  # older than the run: not its
        assert {r.pid for r in leftovers(ref, marker, [leader.pid], by_group=False)} == {
            marked.pid
        }  # later looks
    finally:
        for process in (leader, in_group, marked, stranger):
            process.kill()
            process.wait()
