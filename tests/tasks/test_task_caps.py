"""Caps on active runs: who a run counts against, and both sides of each cap."""

from __future__ import annotations

from typing import Any

import pytest

from pymgr.errors import Conflict
from pymgr.tasks.caps import ActiveRuns, caller_of

ROOT = {"transport": "unix", "uid": 0, "user": "root"}
WWW = {"transport": "unix", "uid": 33, "user": "www-data"}


@pytest.mark.parametrize(
    ("started_by", "caller"),
    [
        (ROOT, "uid 0"),
        ({"transport": "tcp", "key_id": "web", "peer": "127.0.0.1:5000"}, "key web"),
        ({"transport": "tcp", "cert": "console", "peer": "127.0.0.1:5000"}, "certificate console"),
        ({"transport": "legacy", "peer": "127.0.0.1:40000"}, "the legacy secret"),
        ({"transport": "legacy", "peer": "127.0.0.2:40001"}, "the legacy secret"),  # one secret, one caller
        ({"transport": "internal"}, "internal"),
    ],
)
def test_caller_of(started_by: dict[str, Any], caller: str) -> None:
    assert caller_of(started_by) == caller


def test_the_cap_per_caller_both_sides_and_others_unaffected() -> None:
    runs = ActiveRuns()
    runs.add(1, ROOT)
    runs.add(1, ROOT)  # counted once
    runs.check(ROOT, 1, max_active=10, max_per_caller=2)  # at the cap: admitted
    runs.add(2, ROOT)
    with pytest.raises(
        Conflict,
        match=r"^task start refused: uid 0 has 2 active run\(s\) and asks for 1 more; the cap per caller is 2 \(\[tasks\] max_active_per_caller\)",
    ):
        runs.check(ROOT, 1, max_active=10, max_per_caller=2)
    runs.check(WWW, 2, max_active=10, max_per_caller=2)
    runs.discard(1)
    runs.discard(1)
    runs.check(ROOT, 1, max_active=10, max_per_caller=2)
    assert (len(runs), runs.of(ROOT), runs.of(WWW)) == (1, 1, 0)


def test_the_daemons_cap_both_sides_and_a_batch_fits_whole() -> None:
    runs = ActiveRuns()
    for task_id in range(3):
        runs.add(task_id, WWW)
    runs.check(ROOT, 2, max_active=5, max_per_caller=5)  # 3 + 2 = 5: admitted
    with pytest.raises(
        Conflict,
        match=r"^task start refused: 3 run\(s\) are active and 3 more were asked for; the daemon's cap is 5 \(\[tasks\] max_active\)",
    ) as refused:
        runs.check(ROOT, 3, max_active=5, max_per_caller=5)
    assert refused.value.details == {"cap": "max_active", "value": 5, "active": 3, "asked": 3}
