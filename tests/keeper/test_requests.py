"""The keeper's requests, handled in-process on a stand-in for its loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from pymgr.keeper import requests
from pymgr.keeper.loop import Keeper
from pymgr.keeper.journal import status_entry
from pymgr.protocol.keeper import Exit, News, SpawnFailed

SPAWN = {
    "op": "spawn",
    "id": 7,
    "argv": ["/bin/true"],
    "env": {},
    "log": {"dir": "/tmp", "max_bytes": 1024, "keep": 1, "timestamps": False},
}


@dataclass
class StandIn:
    """What ``handle`` reads of the keeper for a spawn it has seen end before."""

    unacked: dict[int, dict[str, Any]]
    runs: dict[int, Any] = field(default_factory=dict)
    sent: list[News] = field(default_factory=list)

    def send(self, message: News) -> None:
        self.sent.append(message)


def exit_entry(task_id: int) -> dict[str, Any]:
    status = Exit(
        id=task_id,
        pid=10,
        start_time=20,
        boot_id="b",
        started_at=1.0,
        ended_at=2.0,
        exit_code=0,
        signal=None,
        error=None,
        killed=False,
        progress=None,
    )
    return status_entry(status)


def test_a_spawn_of_a_run_that_already_ended_gets_its_exit_again() -> None:
    keeper = StandIn(unacked={7: exit_entry(7)})
    requests.handle(cast(Keeper, keeper), SPAWN)
    assert [type(m) for m in keeper.sent] == [Exit]


def test_a_spawn_whose_journalled_exit_is_unreadable_is_answered_spawn_failed() -> None:
    keeper = StandIn(unacked={7: {"id": 7, "exit_code": "zero"}})
    requests.handle(cast(Keeper, keeper), SPAWN)
    assert len(keeper.sent) == 1 and isinstance(keeper.sent[0], SpawnFailed)
    assert keeper.sent[0].id == 7 and "unreadable" in keeper.sent[0].error
