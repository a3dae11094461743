"""Finding and signalling a run's processes: start times, markers, strangers left alone."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from taskhelpers import CALLER, MakeManager, gone, wait_end, wait_log, wait_running

from pymgr.keeper.proctree import (
    ProcRef,
    alive,
    boot_id,
    environ,
    find_marked,
    find_run_processes,
    run_marker,
    send_signal,
    start_time,
)
from pymgr.tasks.states import TaskState

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(SLEEP, start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_start_time_of_self_and_of_nobody() -> None:
    fields = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    assert start_time(os.getpid()) == int(fields[19])
    assert start_time(2**22 + 1) is None  # above the kernel's pid_max ceiling


def test_signal_goes_only_to_the_same_start_time(sleeper: subprocess.Popen[bytes]) -> None:
    ref = ProcRef(sleeper.pid, start_time(sleeper.pid))  # type: ignore[arg-type]
    assert not send_signal(ProcRef(ref.pid, ref.start_time - 1), signal.SIGKILL)  # a "reused" pid
    assert sleeper.poll() is None
    assert send_signal(ref, signal.SIGKILL)
    assert sleeper.wait(5) == -signal.SIGKILL
    assert not send_signal(ref, signal.SIGKILL)  # gone: nothing to signal


def test_alive_follows_the_start_time_and_zombies(sleeper: subprocess.Popen[bytes]) -> None:
    ref = ProcRef(sleeper.pid, start_time(sleeper.pid))  # type: ignore[arg-type]
    assert alive(ref)
    assert not alive(ProcRef(ref.pid, ref.start_time + 1))  # a "reused" pid
    sleeper.kill()
    deadline = time.monotonic() + 5
    while alive(ref):  # a zombie counts as gone
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert sleeper.poll() is not None or sleeper.wait(5) is not None


def test_find_marked_finds_exactly_the_markers_processes() -> None:
    marker = run_marker(8, "abcdefabcdefabcd")
    marked = subprocess.Popen(SLEEP, env=marker, start_new_session=True)
    other = subprocess.Popen(SLEEP, env=run_marker(9, "abcdefabcdefabcd"), start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (found := find_marked([marker, run_marker(3, "0000000000000001")])):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert found == {"abcdefabcdefabcd": [ProcRef(marked.pid, start_time(marked.pid))]}  # type: ignore[arg-type]
        assert environ(marked.pid)[b"PYMGR_TASK_ID"] == b"8"  # type: ignore[index]
        assert environ(2**22 + 1) is None
    finally:
        for proc in (marked, other):
            proc.kill()
            proc.wait()


def test_boot_id_is_the_kernels() -> None:
    assert boot_id() == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", boot_id())


def test_find_by_descendant_and_by_marker() -> None:
    marker = run_marker(7, "feedfacefeedface")
    spawn_child = "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(60)"
    leader = subprocess.Popen([sys.executable, "-c", spawn_child, *SLEEP], start_new_session=True)
    marked = subprocess.Popen(SLEEP, env=marker, start_new_session=True)
    wrong = subprocess.Popen(SLEEP, env=run_marker(7, "0000000000000000"), start_new_session=True)
    try:
        leader_ref = ProcRef(leader.pid, start_time(leader.pid))  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while len(found := find_run_processes(leader_ref, marker, leader_reaped=False)) < 2:
            assert time.monotonic() < deadline, found
            time.sleep(0.01)
        child = (found - {ProcRef(marked.pid, start_time(marked.pid))}).pop()  # type: ignore[arg-type]
        assert psutil.Process(child.pid).ppid() == leader.pid
        assert wrong.pid not in {ref.pid for ref in found}
        # Once the leader may be reaped, its descendants are no longer looked up by pid.
        assert {ref.pid for ref in find_run_processes(leader_ref, marker, leader_reaped=True)} == {marked.pid}
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        for proc in (marked, wrong):
            proc.kill()
        for proc in (leader, marked, wrong):
            proc.wait()


async def test_stranger_with_the_same_task_id_survives_a_stop(make_manager: MakeManager) -> None:
    manager = make_manager()
    record = await wait_running(manager, (await manager.start("sleep", {}, None, CALLER)).id)
    await wait_log(record, "ready")
    stranger = subprocess.Popen(SLEEP, env=run_marker(record.id, "not-this-run"), start_new_session=True)
    try:
        await manager.stop(record.id, CALLER)
        assert (await wait_end(manager, record.id)).state is TaskState.STOPPED
        assert stranger.poll() is None and not gone(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()
