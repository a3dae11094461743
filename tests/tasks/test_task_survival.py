"""Runs outlive the daemon and the keeper: kill -9, SIGTERM with "leave", a killed keeper, a burst cut short.

Real daemons (the ``pymgr serve`` console script), real processes and signals.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from survivalhelpers import (
    LEAVE_CONFIG,
    WAIT_S,
    keeper_pid,
    reap_state_dir,
    states,
    stored_marker,
    wait_until,
)
from taskhelpers import gone

from pymgr.client import AsyncClient, Client
from pymgr.keeper.runs import UNKNOWN_EXIT
from pymgr.protocol.keeper import FrameDecoder
from pymgr.protocol.keeper import encode_frame as encode
from pymgr.keeper.proctree import MARKER_VAR, find_marked, run_marker
from tests.conftest import Daemon


@pytest.fixture(autouse=True)
def reaped(tmp_path: Path) -> Iterator[None]:
    yield
    for db in tmp_path.glob("*/state/tasks.db"):
        reap_state_dir(db.parent)


def restart(start_daemon: Callable[..., Daemon], old: Daemon) -> Daemon:
    """A new daemon on the same directory (config, socket, state) as ``old``."""
    return start_daemon(LEAVE_CONFIG, name=old.dir.name)


def test_kill_9_with_20_runs_every_run_is_accounted_for(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(LEAVE_CONFIG)
    expected: dict[int, tuple[bool, int]] = {}
    with Client(socket=daemon.socket) as client:
        for i in range(20):
            short = i % 2 == 0
            code = i % 4 if short else 0
            record = client.start_task("job", {"seconds": 0.5 if short else 30, "code": code})
            expected[record.id] = (short, code)
        wait_until(lambda: all(r["state"] != "queued" for r in states(client).values()), "all 20 spawned")
    daemon.proc.kill()
    assert daemon.proc.wait(10) == -signal.SIGKILL
    time.sleep(1.0)  # the short runs end while no daemon is up
    daemon = restart(start_daemon, daemon)
    with Client(socket=daemon.socket) as client:
        records = states(client)
        assert sorted(records) == sorted(expected)  # nothing lost, nothing doubled
        for task_id, (short, code) in expected.items():
            record = records[task_id]
            if short:
                assert (record["state"], record["exit_code"]) == (
                    "succeeded" if code == 0 else "failed",
                    code,
                ), record
            else:
                assert record["state"] == "running" and not gone(record["pid"]), record
        assert len({r["pid"] for r in records.values()}) == 20
        markers = [
            run_marker(i, stored_marker(daemon, i)) for i, r in records.items() if r["state"] == "running"
        ]
        assert all(
            len(refs) == 1 for refs in find_marked(markers).values()
        )  # one process per run: no respawn
        long_ids = [task_id for task_id, (short, _) in expected.items() if not short]
        for task_id in long_ids:
            client.stop_task(task_id)
        wait_until(
            lambda: all(states(client)[i]["state"] == "stopped" for i in long_ids), "the long runs stopped"
        )
        assert {states(client)[i]["signal"] for i in long_ids} == {"SIGTERM"}
        assert all(gone(records[i]["pid"]) for i in long_ids)


def test_sigterm_with_leave_then_restart_readopts_and_can_stop(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(LEAVE_CONFIG)
    with Client(socket=daemon.socket) as client:
        long = client.start_task("job", {"seconds": 30})
        short = client.start_task("job", {"seconds": 0.8, "code": 7})
        wait_until(
            lambda: all(states(client)[i]["state"] == "running" for i in (long.id, short.id)), "running"
        )
        pid = states(client)[long.id]["pid"]
    assert daemon.stop(signal.SIGTERM) == 0
    assert "1 task(s) ended" not in daemon.log() and not gone(pid)
    time.sleep(1.0)
    daemon = restart(start_daemon, daemon)
    with Client(socket=daemon.socket) as client:
        records = states(client)
        assert (records[long.id]["state"], records[long.id]["pid"]) == ("running", pid)
        assert (records[short.id]["state"], records[short.id]["exit_code"]) == ("failed", 7)
        client.stop_task(long.id)
        ended = wait_until(lambda: (r := states(client)[long.id])["state"] == "stopped" and r, "stopped")
        assert (ended["signal"], ended["cancel_source"]) == ("SIGTERM", "user")
        assert gone(pid)


def printed(record: dict[str, object]) -> bool:
    """True once the job's first line is in its log."""
    log = Path(str(record["log_path"]))
    return log.exists() and "started" in log.read_text()


def test_killed_keeper_runs_are_readopted_then_lost_with_the_reason(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(LEAVE_CONFIG)
    state_dir = daemon.dir / "state"
    with Client(socket=daemon.socket) as client:
        long = client.start_task("job", {"seconds": 30})
        short = client.start_task("job", {"seconds": 2})
        wait_until(
            lambda: all(states(client)[i]["state"] == "running" for i in (long.id, short.id)), "running"
        )
        # "running" comes as soon as the keeper spawned them, a moment before the daemon holds their
        # pipes; once they printed, the daemon holds them (docs/tasks.md, "Output across a keeper's death").
        wait_until(lambda: all(printed(states(client)[i]) for i in (long.id, short.id)), "the jobs' output")
        pids = {i: states(client)[i]["pid"] for i in (long.id, short.id)}
        first_keeper = keeper_pid(state_dir)
        os.kill(first_keeper, signal.SIGKILL)
        wait_until(lambda: keeper_pid(state_dir) not in (0, first_keeper), "a new keeper")
        records = states(client)
        assert {i: records[i]["pid"] for i in pids} == pids and not gone(pids[long.id])
        ended = wait_until(
            lambda: (r := states(client)[short.id])["state"] != "running" and r, "the short run ended"
        )
        assert (ended["state"], ended["exit_code"], ended["error"]) == ("lost", None, UNKNOWN_EXIT)
        client.stop_task(long.id)  # still stoppable: the new keeper adopted it
        stopped = wait_until(lambda: (r := states(client)[long.id])["state"] == "stopped" and r, "stopped")
        assert (stopped["cancel_source"], stopped["error"]) == ("user", UNKNOWN_EXIT)
        assert gone(pids[long.id])
    assert "lost the task keeper; reconnecting" in daemon.log()


#: Prints 0, 1, 2, ... one line every 20 ms, until stopped.
TICKER = """
[tasks.types.ticker]
argv = ["{python}", "-c", "import itertools, time\\nfor i in itertools.count():\\n    print(i, flush=True)\\n    time.sleep(0.02)"]
"""


def test_a_killed_keeper_neither_kills_a_writing_run_nor_loses_its_output(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(LEAVE_CONFIG + TICKER)
    state_dir = daemon.dir / "state"
    with Client(socket=daemon.socket) as client:
        run = client.start_task("ticker")
        log = Path(run.log_path)
        wait_until(lambda: log.exists() and log.read_text().count("\n") >= 5, "its first lines")
        pid = states(client)[run.id]["pid"]
        first_keeper = keeper_pid(state_dir)
        os.kill(first_keeper, signal.SIGKILL)
        at_kill = log.read_text().count("\n")
        wait_until(lambda: keeper_pid(state_dir) not in (0, first_keeper), "a new keeper")
        # It goes on writing: into the pipe the daemon holds, then to the new keeper, into the same log.
        wait_until(lambda: log.read_text().count("\n") >= at_kill + 50, "lines written after the keeper died")
        assert not gone(pid) and states(client)[run.id]["state"] == "running"
        assert client.logs(run.id).startswith(b"0\n")  # the API reads it as one log
        client.stop_task(run.id)
        stopped = wait_until(lambda: (r := states(client)[run.id])["state"] == "stopped" and r, "stopped")
        assert (
            stopped["signal"] is None and stopped["error"] == UNKNOWN_EXIT
        )  # adopted: not the new keeper's child
        assert gone(pid)
    numbers = [int(line) for line in log.read_text().splitlines()]
    assert numbers == list(range(len(numbers))) and len(numbers) >= at_kill + 50  # no line lost, none twice


def test_kill_9_in_a_burst_of_starts_keeps_every_acknowledged_start(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(LEAVE_CONFIG)
    acknowledged: list[int] = []
    enough = threading.Event()

    async def burst() -> None:
        async with AsyncClient(socket=daemon.socket) as client:

            async def one() -> None:
                try:
                    record = await client.start_task("job", {"seconds": 0.1})
                except (httpx.HTTPError, OSError, Exception):  # the daemon died under it: not acknowledged
                    return
                acknowledged.append(record.id)
                if len(acknowledged) >= 40:
                    enough.set()

            await asyncio.gather(*(one() for _ in range(200)))

    thread = threading.Thread(target=asyncio.run, args=(burst(),))
    thread.start()
    assert enough.wait(WAIT_S_BURST)
    daemon.proc.kill()
    daemon.proc.wait(10)
    thread.join(30)
    db = sqlite3.connect(daemon.dir / "state" / "tasks.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in db.execute("SELECT id FROM runs")}
    finally:
        db.close()
    assert set(acknowledged) <= stored and len(acknowledged) >= 40
    daemon = restart(start_daemon, daemon)  # the next daemon runs what was accepted and not yet run
    with Client(socket=daemon.socket) as client:

        def all_ended() -> dict[int, dict[str, object]] | None:
            now = states(client)
            return now if all(r["state"] == "succeeded" for r in now.values()) else None

        final = wait_until(all_ended, "every stored start ran to its end")
        assert set(final) == stored


#: One run at a time: a second one stays queued.
HOLD = """
[tasks.types.hold]
argv = ["/bin/sleep", "600"]
max_concurrent = 1
"""


def spawned(sock: socket.socket) -> dict[str, Any]:
    """The keeper's first "spawned" reply on ``sock``."""
    decoder = FrameDecoder()
    while True:
        while isinstance(frame := decoder.next_frame(), dict):
            if frame["op"] == "spawned":
                return frame
        decoder.receive_data(sock.recv(65536))


def test_a_queued_run_a_dying_keeper_spawned_is_adopted_not_run_twice(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(LEAVE_CONFIG + HOLD)
    state_dir = daemon.dir / "state"
    with Client(socket=daemon.socket) as client:
        first, queued = client.start_task("hold"), client.start_task("hold")
        wait_until(lambda: states(client)[first.id]["state"] == "running", "the first run")
    daemon.proc.kill()
    daemon.proc.wait(10)
    # The daemon's last request reaches the keeper, which spawns it and dies before anyone records it.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(state_dir / "run" / "keeper.sock"))
        sock.settimeout(WAIT_S)
        marker = run_marker(queued.id, stored_marker(daemon, queued.id))
        log = {"dir": str(state_dir / "logs"), "max_bytes": 4096, "keep": 1}
        argv = ["/bin/sleep", "600"]
        sock.sendall(
            encode(
                {
                    "op": "spawn",
                    "id": queued.id,
                    "argv": argv,
                    "env": marker,
                    "marker": marker[MARKER_VAR],
                    "log": log,
                }
            )
        )
        frame = spawned(sock)
    os.kill(keeper_pid(state_dir), signal.SIGKILL)
    daemon = start_daemon(LEAVE_CONFIG + HOLD, name=daemon.dir.name)
    with Client(socket=daemon.socket) as client:
        record = wait_until(lambda: (r := states(client)[queued.id])["state"] == "running" and r, "adopted")
        assert (record["pid"], record["pid_start_time"]) == (frame["pid"], frame["start_time"])
        assert states(client)[first.id]["state"] == "running"  # re-adopted by its pid, as before
        client.stop_task(queued.id)
        wait_until(lambda: states(client)[queued.id]["state"] == "stopped", "stopped")
        assert gone(frame["pid"])


#: Seconds the burst gets to have 40 starts acknowledged.
WAIT_S_BURST = 30.0
