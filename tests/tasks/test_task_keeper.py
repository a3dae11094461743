"""The keeper process on its own, spoken to in frames over its socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from taskhelpers import gone

from pymgr.protocol.keeper import FrameDecoder
from pymgr.protocol.keeper import encode_frame as encode

#: Seconds any wait here may take.
WAIT_S = 15.0


class Peer:
    """A daemon stand-in: connects, sends requests, reads replies."""

    def __init__(self, run_dir: Path) -> None:
        deadline = time.monotonic() + WAIT_S
        while True:
            self.sock = socket.socket(socket.AF_UNIX)
            try:
                self.sock.connect(str(run_dir / "keeper.sock"))
                break
            except OSError:
                self.sock.close()
                assert time.monotonic() < deadline, "no keeper socket"
                time.sleep(0.02)
        self.sock.settimeout(WAIT_S)
        self.decoder = FrameDecoder()

    def send(self, **message: Any) -> None:
        self.sock.sendall(encode(message))

    def until(self, op: str, **match: Any) -> dict[str, Any]:
        while True:
            while isinstance(frame := self.decoder.next_frame(), dict):
                if frame["op"] == op and all(frame.get(k) == v for k, v in match.items()):
                    return frame
            data = self.sock.recv(65536)
            assert data, f"keeper hung up while we waited for {op} {match}"
            self.decoder.receive_data(data)

    def frames_until(self, op: str) -> list[dict[str, Any]]:
        """Every frame up to and including the first ``op``."""
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["op"] != op:
            while isinstance(frame := self.decoder.next_frame(), dict):
                frames.append(frame)
                if frame["op"] == op:
                    return frames
            data = self.sock.recv(65536)
            assert data, f"keeper hung up while we waited for {op}"
            self.decoder.receive_data(data)
        return frames

    def close(self) -> None:
        self.sock.close()


#: Every Peer a test opened, closed after it.
_open_peers: list[Peer] = []


@pytest.fixture(autouse=True)
def close_peers() -> Iterator[None]:
    yield
    while _open_peers:
        _open_peers.pop().close()


def connect(run_dir: Path) -> Peer:
    peer = Peer(run_dir)
    _open_peers.append(peer)
    return peer


@pytest.fixture
def state(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    return tmp_path


def start_keeper(state: Path, idle_exit_s: float = 30.0) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "pymgr.keeper",
        "--state-dir",
        str(state),
        "--idle-exit-s",
        str(idle_exit_s),
    ]
    return subprocess.Popen(argv, stderr=subprocess.PIPE, start_new_session=True)


@pytest.fixture
def keeper(state: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = start_keeper(state)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(10)
    assert process.stderr is not None
    process.stderr.close()


def spawn(peer: Peer, state: Path, task_id: int, argv: list[str], **extra: Any) -> dict[str, Any]:
    peer.send(
        op="spawn",
        id=task_id,
        argv=argv,
        env={},
        cwd="/",
        marker=f"m{task_id}",
        log={"dir": str(state / "logs"), "max_bytes": 4096, "keep": 1, "timestamps": False},
        **extra,
    )
    return peer.until("spawned", id=task_id)


def test_hello_then_synced_and_the_socket_is_private(keeper: subprocess.Popen[bytes], state: Path) -> None:
    peer = connect(state / "run")
    hello = peer.until("hello")
    assert (hello["protocol"], hello["keeper_pid"]) == (1, keeper.pid)
    peer.until("synced")
    assert (state / "run" / "keeper.sock").stat().st_mode & 0o777 == 0o600
    assert (state / "run").stat().st_mode & 0o777 == 0o700
    assert os.getsid(keeper.pid) == keeper.pid  # its own session: the daemon's signals never reach it
    peer.close()


def test_a_second_keeper_leaves_the_first_serving(keeper: subprocess.Popen[bytes], state: Path) -> None:
    connect(state / "run").until("synced")
    second = start_keeper(state)
    assert second.wait(WAIT_S) == 0
    assert second.stderr is not None
    assert b"another keeper serves" in second.stderr.read()
    second.stderr.close()
    assert keeper.poll() is None and connect(state / "run").until("hello")["keeper_pid"] == keeper.pid


def test_bad_requests_get_an_error_and_the_keeper_goes_on(
    keeper: subprocess.Popen[bytes], state: Path
) -> None:
    peer = connect(state / "run")
    peer.until("synced")
    peer.send(op="nope")
    assert peer.until("error")["message"].startswith(
        "bad request (op 'nope', id None, fields op); ops: spawn, kill"
    )
    peer.send(op="kill")  # no id
    assert "KeyError" in peer.until("error")["message"]
    peer.send(
        op="spawn", id="7", env={"PYMGR_TASK_MARKER": "f00d"}, marker="f00d"
    )  # never echoed: it goes to the logs
    assert peer.until("error")["message"].startswith(
        "bad request (op 'spawn', id '7', fields env, id, marker, op); ops:"
    )
    peer.send(op="spawn", id=1, argv=[], env={})
    assert (
        peer.until("spawn_failed", id=1)["error"]
        == "spawn failed: argv must be a non-empty list of strings, not []"
    )
    assert spawn(peer, state, 2, ["/bin/true"])["pid"] > 0


def test_exit_statuses_wait_for_an_ack_across_connections(
    keeper: subprocess.Popen[bytes], state: Path
) -> None:
    peer = connect(state / "run")
    peer.until("synced")
    spawn(peer, state, 5, ["/bin/sh", "-c", "echo out; exit 3"])
    first = peer.until("exit", id=5)
    assert (first["exit_code"], first["signal"], first["error"]) == (3, None, None)
    peer.close()  # no ack: as if the daemon died before recording it
    journal = state / "run" / "status.journal"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [line.get("exit_code") for line in lines if "id" in line] == [
        3
    ]  # after its spawning and started lines
    peer = connect(state / "run")
    again = peer.until("exit", id=5)
    assert again == first
    peer.until("synced")
    peer.send(op="ack", id=5)
    peer.send(op="resend")
    spawn(peer, state, 5, ["/bin/true"])  # a spawn of an acknowledged id is a new run
    peer.until("exit", id=5, exit_code=0)
    assert '{"ack":5}' in journal.read_text().splitlines()
    peer.close()
    assert keeper.poll() is None
    again = connect(state / "run")  # the acknowledged status is not replayed; the new run's exit is
    replayed = [f for f in again.frames_until("synced") if f["op"] == "exit"]
    assert all(f["exit_code"] == 0 for f in replayed)


def test_spawn_is_idempotent_by_id(keeper: subprocess.Popen[bytes], state: Path) -> None:
    peer = connect(state / "run")
    peer.until("synced")
    first = spawn(peer, state, 7, ["/bin/sleep", "30"])
    second = spawn(peer, state, 7, ["/bin/sleep", "30"])
    assert second["pid"] == first["pid"]
    peer.send(op="kill", id=7, grace_s=1)
    assert peer.until("exit", id=7)["signal"] == "SIGTERM"
    assert gone(first["pid"])


def test_a_new_connection_replaces_the_old_after_its_last_requests(
    keeper: subprocess.Popen[bytes], state: Path
) -> None:
    old = connect(state / "run")
    old.until("synced")
    old.send(
        op="spawn",
        id=9,
        argv=["/bin/sleep", "30"],
        env={},
        marker="m9",
        log={"dir": str(state / "logs"), "max_bytes": 4096, "keep": 1, "timestamps": False},
    )
    old.close()  # gone before any reply: the spawn still happens, once
    new = connect(state / "run")
    new.until("hello")
    live = new.until("live", id=9)
    new.until("synced")
    new.send(op="kill", id=9, grace_s=0)
    assert new.until("exit", id=9)["killed"] is True
    assert gone(live["pid"])


def test_idle_exit_both_sides(state: Path) -> None:
    process = start_keeper(state, idle_exit_s=0.3)
    try:
        peer = connect(state / "run")
        peer.until("synced")
        spawn(peer, state, 1, ["/bin/sleep", "0.8"])
        time.sleep(0.5)
        assert process.poll() is None  # a connected daemon and a run: no exit
        peer.until("exit", id=1)
        peer.send(op="ack", id=1)
        time.sleep(0.5)
        assert process.poll() is None  # still connected
        peer.close()
        assert process.wait(WAIT_S) == 0  # no run, nobody connected, past the grace period
        assert not (state / "run" / "keeper.sock").exists()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()


def test_exit_when_idle_waits_for_the_last_run(keeper: subprocess.Popen[bytes], state: Path) -> None:
    peer = connect(state / "run")
    peer.until("synced")
    spawn(peer, state, 3, ["/bin/sleep", "0.5"])
    peer.send(op="exit_when_idle")
    time.sleep(0.2)
    assert keeper.poll() is None
    peer.until("exit", id=3)
    assert keeper.wait(WAIT_S) == 0


def test_status_journal_replays_unacked_skips_a_torn_line_and_compacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pymgr.keeper import journal as _keeperruns
    from pymgr.keeper.journal import StatusJournal

    path = str(tmp_path / "status.journal")
    journal = StatusJournal(path)
    for task_id in (1, 2, 3):
        journal.add({"id": task_id, "exit_code": task_id})
    journal.sync()
    journal.ack(2)
    with open(path, "ab") as f:
        f.write(b'{"id": 4, "exit_co')  # a crash in the middle of a line
    reread = StatusJournal(path)
    assert sorted(reread.unacked) == [1, 3]
    monkeypatch.setattr(_keeperruns, "COMPACT_BYTES", 10)
    reread.ack(1)  # past the size: rewritten with what is still unacknowledged
    assert [json.loads(line) for line in Path(path).read_text().splitlines()] == [{"id": 3, "exit_code": 3}]
    assert StatusJournal(path).unacked == {3: {"id": 3, "exit_code": 3}}


def end(process: subprocess.Popen[bytes]) -> None:
    """kill -9 a keeper this test started, and close its stderr pipe."""
    process.kill()
    process.wait(10)
    assert process.stderr is not None
    process.stderr.close()


def test_a_run_a_killed_keeper_started_is_reported_by_the_next_as_an_orphan(state: Path) -> None:
    first = start_keeper(state)
    peer = connect(state / "run")
    run = spawn(peer, state, 5, ["/bin/sleep", "30"])
    stranger = subprocess.Popen(["/bin/sleep", "30"], env={"PYMGR_TASK_ID": "6", "PYMGR_TASK_MARKER": "m6"})
    try:
        end(first)
        peer.close()
        second = start_keeper(state)
        try:
            frames = connect(state / "run").frames_until("synced")
            orphans = [f for f in frames if f["op"] == "orphan"]
            assert [(f["id"], f["pid"], f["start_time"]) for f in orphans] == [
                (5, run["pid"], run["start_time"])
            ]
        finally:
            end(second)
    finally:
        for pid in (run["pid"], stranger.pid):
            os.kill(pid, 9)
        stranger.wait()


def test_a_spawn_cut_short_before_its_process_was_noted_ends_lost(state: Path) -> None:
    from pymgr.keeper.journal import SPAWN_UNKNOWN

    (state / "run").mkdir(mode=0o700)
    (state / "run" / "status.journal").write_text('{"spawning": 8}\n')
    process = start_keeper(state)
    try:
        peer = connect(state / "run")
        status = peer.until("exit", id=8)
        assert (status["error"], status["pid"], status["exit_code"], status["signal"]) == (
            SPAWN_UNKNOWN,
            None,
            None,
            None,
        )
        assert not [f for f in peer.frames_until("synced") if f["op"] == "orphan"]
    finally:
        end(process)


def test_status_journal_keeps_spawns_until_their_run_ends_or_is_acknowledged(tmp_path: Path) -> None:
    from pymgr.keeper.journal import StatusJournal, orphans

    path = str(tmp_path / "status.journal")
    journal = StatusJournal(path)
    for task_id in (1, 2, 3, 4):
        journal.spawning(task_id)
        journal.started({"id": task_id, "pid": 100 + task_id, "start_time": 7})
    journal.spawning(5)  # its process not noted yet
    journal.add({"id": 1, "exit_code": 0})  # ended: its exit says all
    journal.ack(2)  # the daemon knows it is over
    journal.unspawned(3)  # its process was gone when adopted
    reread = StatusJournal(path)
    assert reread.spawns == {4: {"id": 4, "pid": 104, "start_time": 7}, 5: None}
    assert orphans(reread, supervised=[]) == [{"id": 4, "pid": 104, "start_time": 7}]
    assert orphans(reread, supervised=[4]) == []
