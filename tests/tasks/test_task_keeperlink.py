"""The daemon's end of the keeper link: how queued requests leave (first of a turn at once, the rest together)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from taskhelpers import CALLER, MakeManager, wait_running

from pymgr.protocol.keeper import Ack, FrameDecoder, LogSettings, Spawn
from pymgr.tasks.keeperlink import FLUSH_BYTES, KeeperLink, rotate_keeper_log
from pymgr.tasks.states import TaskState

LOG = LogSettings(dir="/tmp", max_bytes=1, keep=1)


class FakeWriter:
    """Stands for the socket's StreamWriter: keeps every write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


def frames(data: bytes) -> list[object]:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    found = []
    while isinstance(frame := decoder.next_frame(), dict):
        found.append(frame["id"])
    return found


async def test_the_first_request_of_a_turn_leaves_at_once_and_the_rest_at_its_end(tmp_path: Path) -> None:
    link = KeeperLink(
        tmp_path, idle_exit_s=1.0, start_timeout_s=1.0, on_message=lambda m: None, on_lost=lambda: None
    )
    writer = FakeWriter()
    link._writer = writer  # type: ignore[assignment]
    for task_id in (1, 2, 3):
        link.send(Ack(id=task_id))
    assert [frames(w) for w in writer.writes] == [[1]]  # the keeper can start on the first one now
    await asyncio.sleep(0)
    assert [frames(w) for w in writer.writes] == [[1], [2, 3]]  # one write for the rest of the turn
    link.send(Ack(id=4))  # a new turn: at once again
    assert [frames(w) for w in writer.writes][-1] == [4]


async def test_a_burst_leaves_every_flush_bytes(tmp_path: Path) -> None:
    link = KeeperLink(
        tmp_path, idle_exit_s=1.0, start_timeout_s=1.0, on_message=lambda m: None, on_lost=lambda: None
    )
    writer = FakeWriter()
    link._writer = writer  # type: ignore[assignment]
    padding = "x" * 500
    for task_id in range(20):
        link.send(Spawn(id=task_id, argv=(padding[:320],), env={}, log=LOG))  # ~520 bytes, as before
    await asyncio.sleep(0)
    sent = [frames(w) for w in writer.writes]
    assert [i for group in sent for i in group] == list(range(20))  # in order, none lost
    assert 3 <= len(sent) <= 2 + 20 * 520 // FLUSH_BYTES  # grouped: far fewer writes than requests


def test_the_keeper_log_is_rotated_at_a_start_once_it_reached_its_limit(tmp_path: Path) -> None:
    log = tmp_path / "keeper.log"
    rotate_keeper_log(log, 10)  # no log yet: nothing to do
    assert not log.exists()
    log.write_bytes(b"123456789")  # under the limit: kept, appended to
    rotate_keeper_log(log, 10)
    assert log.read_bytes() == b"123456789" and not (tmp_path / "keeper.log.1").exists()
    log.write_bytes(b"0123456789")  # at the limit: the next keeper starts a new file
    (tmp_path / "keeper.log.1").write_bytes(b"older")
    rotate_keeper_log(log, 10)
    assert not log.exists() and (tmp_path / "keeper.log.1").read_bytes() == b"0123456789"  # one old file kept


async def test_a_started_keeper_writes_to_a_rotated_log(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    (run_dir / "keeper.log").write_bytes(b"x" * 100)
    link = KeeperLink(
        tmp_path,
        idle_exit_s=0.5,
        start_timeout_s=10.0,
        log_max_bytes=50,
        on_message=lambda m: None,
        on_lost=lambda: None,
    )
    await link.connect()
    await link.close(wait_exit_s=5.0)
    assert (run_dir / "keeper.log.1").read_bytes() == b"x" * 100
    assert (run_dir / "keeper.log").exists()  # the new keeper's stderr


async def test_an_exit_the_daemon_cannot_read_ends_its_run_lost_and_is_acknowledged(
    make_manager: MakeManager,
) -> None:
    manager = make_manager()
    record = await manager.start("binsleep", {}, None, CALLER)
    await wait_running(manager, record.id)
    link = manager._link
    sent: list[Any] = []
    link.send = sent.append  # type: ignore[method-assign]
    unreadable = {"op": "exit", "id": record.id, "exit_code": "zero"}  # a mistyped, incomplete exit
    with manager._supervision.read_batch():
        link._deliver(unreadable)
    ended = manager.get(record.id)
    assert ended.state is TaskState.LOST
    assert ended.error is not None and ended.error.startswith("its exit report could not be read:")
    assert Ack(id=record.id) in sent  # the keeper forgets it: it is not sent again, unreadable
    link._deliver({"op": "spawned", "id": "x"})  # other news: logged and dropped, nothing changes
    assert manager.get(record.id).state is TaskState.LOST
