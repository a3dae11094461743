"""The daemon's end of the keeper link: how queued requests leave (first of a turn at once, the rest together)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pymgr.tasks._framing import FrameDecoder
from pymgr.tasks.keeperlink import FLUSH_BYTES, KeeperLink


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
    link = KeeperLink(tmp_path, idle_exit_s=1.0, start_timeout_s=1.0, on_message=lambda m: None, on_lost=lambda: None)
    writer = FakeWriter()
    link._writer = writer  # type: ignore[assignment]
    for task_id in (1, 2, 3):
        link.send({"op": "spawn", "id": task_id})
    assert [frames(w) for w in writer.writes] == [[1]]  # the keeper can start on the first one now
    await asyncio.sleep(0)
    assert [frames(w) for w in writer.writes] == [[1], [2, 3]]  # one write for the rest of the turn
    link.send({"op": "spawn", "id": 4})  # a new turn: at once again
    assert [frames(w) for w in writer.writes][-1] == [4]


async def test_a_burst_leaves_every_flush_bytes(tmp_path: Path) -> None:
    link = KeeperLink(tmp_path, idle_exit_s=1.0, start_timeout_s=1.0, on_message=lambda m: None, on_lost=lambda: None)
    writer = FakeWriter()
    link._writer = writer  # type: ignore[assignment]
    padding = "x" * 500
    for task_id in range(20):
        link.send({"op": "spawn", "id": task_id, "pad": padding})
    await asyncio.sleep(0)
    sent = [frames(w) for w in writer.writes]
    assert [i for group in sent for i in group] == list(range(20))  # in order, none lost
    assert 3 <= len(sent) <= 2 + 20 * 520 // FLUSH_BYTES  # grouped: far fewer writes than requests
