"""The keeper's requests, handled in-process on a stand-in for its loop."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, cast

from pymgr.keeper import requests
from pymgr.keeper.loop import Keeper
from pymgr.keeper.journal import status_entry
from pymgr.protocol.keeper import Exit, News, SpawnFailed
from tests.protocol.test_keeper import _EXIT as EXIT

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
    return status_entry(dataclasses.replace(EXIT, id=task_id))


def test_a_spawn_of_a_run_that_already_ended_gets_its_exit_again() -> None:
    keeper = StandIn(unacked={7: exit_entry(7)})
    requests.handle(cast(Keeper, keeper), SPAWN)
    assert [type(m) for m in keeper.sent] == [Exit]


def test_a_spawn_whose_journalled_exit_is_unreadable_is_answered_spawn_failed() -> None:
    keeper = StandIn(unacked={7: {"id": 7, "exit_code": "zero"}})
    requests.handle(cast(Keeper, keeper), SPAWN)
    assert len(keeper.sent) == 1 and isinstance(keeper.sent[0], SpawnFailed)
    assert keeper.sent[0].id == 7 and "unreadable" in keeper.sent[0].error
