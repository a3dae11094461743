"""``wait(task_id, timeout_s)`` of both clients against a real daemon (client/waiting.py).

Every test runs once with ``Client`` and once with ``AsyncClient``: the same
promise, the same errors.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pymgr.client import AsyncClient, Client, ConnectionFailed, Retry, TaskRecord, WaitTimeout
from pymgr.errors import NotFound, PymgrError
from tests.conftest import BASE_CONFIG, Daemon
from tests.tasks.survivalhelpers import LEAVE_CONFIG, wait_until

Wait = Callable[..., TaskRecord]


@pytest.fixture(params=["sync", "async"])
def wait(request: pytest.FixtureRequest) -> Wait:
    """``wait(socket, task_id, timeout_s, retry=None)`` through one client or the other."""

    def sync(socket: Path, task_id: int, timeout_s: float | None, retry: Retry | None = None) -> TaskRecord:
        with Client(socket=socket, retry=retry) as client:
            return client.wait(task_id, timeout_s)

    def through_async(
        socket: Path, task_id: int, timeout_s: float | None, retry: Retry | None = None
    ) -> TaskRecord:
        async def run() -> TaskRecord:
            async with AsyncClient(socket=socket, retry=retry) as client:
                return await client.wait(task_id, timeout_s)

        return asyncio.run(run())

    return sync if request.param == "sync" else through_async


def test_a_run_that_ended_before_the_wait_is_returned_at_once(daemon: Daemon, wait: Wait) -> None:
    with Client(socket=daemon.socket) as client:
        run = client.start_task("echo", {"word": "x"})
        wait_until(lambda: client.task(run.id).is_final, "the end")
        started = time.monotonic()
        final = wait(daemon.socket, run.id, 10)
        assert time.monotonic() - started < 5
        assert final == client.task(run.id) and final.state == "succeeded" and final.exit_code == 0


def test_a_run_that_ends_during_the_wait(daemon: Daemon, wait: Wait) -> None:
    with Client(socket=daemon.socket) as client:
        run = client.start_task("scan", {"task_id": 1, "duration": 1, "exit_code": 3})
        final = wait(daemon.socket, run.id, 30)
        assert (final.state, final.exit_code) == ("failed", 3)
        assert final.ended_at is not None and final == client.task(run.id)  # the complete record


def test_a_timeout_of_0_looks_once_returning_an_ended_run_and_timing_out_a_running_one(
    daemon: Daemon, wait: Wait
) -> None:
    with Client(socket=daemon.socket) as client:
        ended = client.start_task("echo", {"word": "x"})
        wait_until(lambda: client.task(ended.id).is_final, "the end")
        assert wait(daemon.socket, ended.id, 0) == client.task(ended.id)
        running = client.start_task("scan", {"task_id": 4, "duration": 30})
        wait_until(lambda: client.task(running.id).state == "running", "running")
        with pytest.raises(WaitTimeout) as info:
            wait(daemon.socket, running.id, 0)
        client.stop_task(running.id)
        with pytest.raises(NotFound):
            wait(daemon.socket, 999_999, 0)
    assert (info.value.task_id, info.value.last_state) == (running.id, "running")
    assert info.value.details["timeout_s"] == 0


def test_a_wait_that_times_out_says_which_run_and_where_it_was(daemon: Daemon, wait: Wait) -> None:
    with Client(socket=daemon.socket) as client:
        run = client.start_task("scan", {"task_id": 2, "duration": 30})
        wait_until(lambda: client.task(run.id).state == "running", "running")
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as info:
            wait(daemon.socket, run.id, 0.5)
        took = time.monotonic() - started
        client.stop_task(run.id)
    assert 0.5 <= took < 5
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, PymgrError)
    assert (info.value.task_id, info.value.last_state) == (run.id, "running")
    assert (
        str(info.value) == f"task {run.id} did not end within 0.5 s (still running); wait longer, or stop it"
    )


#: A daemon whose stream is quiet for a minute between events, with a run type that reports
#: progress every 0.2 s for ``ticks`` times, then sleeps without a word.
QUIET_CONFIG = (
    BASE_CONFIG.replace("[tasks]\nstop_grace_s = 1\n", "[tasks]\nstop_grace_s = 1\nevents_heartbeat_s = 60\n")
    + """
[tasks.types.ticks]
argv = ["{python}", "-c", "import sys, time\\nfor n in range(int(sys.argv[1])):\\n    print('PYMGR_PROGRESS', n, flush=True)\\n    time.sleep(0.2)\\ntime.sleep(60)", "{ticks}"]

[tasks.types.ticks.params]
ticks = { type = "int", min = 0 }
"""
)
assert "events_heartbeat_s = 60" in QUIET_CONFIG


@pytest.mark.parametrize(
    ("ticks", "timeout_s"),
    [
        pytest.param(0, 0.5, id="a quiet run"),
        # Progress until 0.5 s before the end: a read timeout fixed when the stream opened would
        # wait for its full 3 s from the last event, and raise 2.5 s late.
        pytest.param(13, 3.0, id="a run quiet after a while"),
    ],
)
def test_a_wait_times_out_at_its_timeout_however_quiet_the_stream(
    start_daemon: Callable[..., Daemon], wait: Wait, ticks: int, timeout_s: float
) -> None:
    daemon = start_daemon(QUIET_CONFIG)
    with Client(socket=daemon.socket) as client:
        run = client.start_task("ticks", {"ticks": ticks})
        wait_until(lambda: client.task(run.id).state == "running", "running")
        started = time.monotonic()
        with pytest.raises(WaitTimeout):
            wait(daemon.socket, run.id, timeout_s)
        took = time.monotonic() - started
        client.stop_task(run.id)
    assert timeout_s <= took < timeout_s + 1.0


def test_the_retries_of_a_wait_end_at_its_timeout(daemon: Daemon, wait: Wait) -> None:
    """A daemon that is gone, retried every 2 s at least: the wait still ends at its 0.5 s."""
    daemon.stop(signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"^task 1 did not end within 0\.5 s before its state was seen; "):
        wait(daemon.socket, 1, 0.5, Retry(attempts=5, backoff_s=4, max_backoff_s=4))
    assert 0.5 <= time.monotonic() - started < 1.5


def test_a_wait_for_no_run_is_not_found(daemon: Daemon, wait: Wait) -> None:
    with pytest.raises(NotFound):
        wait(daemon.socket, 999999, 5)


def test_a_negative_timeout_is_refused(daemon: Daemon, wait: Wait) -> None:
    with pytest.raises(ValueError, match=r"^timeout_s must be 0 or more \(or None: no limit\), not -1$"):
        wait(daemon.socket, 1, -1)


def _kill_and_restart(
    start_daemon: Callable[..., Daemon], daemon: Daemon, after_s: float
) -> threading.Thread:
    """In a thread: after ``after_s``, kill the daemon with -9 (its runs live on in the keeper), start a new one."""

    def restart() -> None:
        time.sleep(after_s)
        daemon.stop(signal.SIGKILL)
        start_daemon(LEAVE_CONFIG, name=daemon.dir.name)

    thread = threading.Thread(target=restart)
    thread.start()
    return thread


def test_a_wait_outlives_a_daemon_restart_with_retry(start_daemon: Callable[..., Daemon], wait: Wait) -> None:
    """The stream breaks; the wait opens it again (retrying while the daemon is down) and sees the end."""
    daemon = start_daemon(LEAVE_CONFIG)
    with Client(socket=daemon.socket) as client:
        run = client.start_task("job", {"seconds": 4, "code": 5})
        wait_until(lambda: client.task(run.id).state == "running", "running")
    thread = _kill_and_restart(start_daemon, daemon, 0.5)
    try:
        final = wait(daemon.socket, run.id, 60, Retry(attempts=100, backoff_s=0.1, max_backoff_s=0.5))
    finally:
        thread.join()
    assert (final.state, final.exit_code) == ("failed", 5)


def test_a_wait_without_retry_says_the_daemon_is_gone(
    start_daemon: Callable[..., Daemon], wait: Wait
) -> None:
    daemon = start_daemon(LEAVE_CONFIG)
    with Client(socket=daemon.socket) as client:
        run = client.start_task("job", {"seconds": 30})
        wait_until(lambda: client.task(run.id).state == "running", "running")
    killer = threading.Timer(0.5, daemon.stop, args=(signal.SIGKILL,))
    killer.start()
    try:
        with pytest.raises(ConnectionFailed, match=r"^cannot reach pymgr at socket "):
            wait(daemon.socket, run.id, 30)
    finally:
        killer.join()
    start_daemon(LEAVE_CONFIG, name=daemon.dir.name)  # to stop the run it left behind
    with Client(socket=daemon.socket) as client:
        client.stop_task(run.id)


async def test_cancelling_an_async_wait_ends_it_at_once(daemon: Daemon) -> None:
    async with AsyncClient(socket=daemon.socket) as client:
        run = await client.start_task("scan", {"task_id": 3, "duration": 30})
        waiter = asyncio.create_task(client.wait(run.id))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert time.monotonic() - started < 1
        await client.stop_task(run.id)
