"""Restart policy, back-off and the run queue: pure functions on a fake clock, table-tested."""

from __future__ import annotations

import pytest

from pymgr.tasks.restart import Decision, RestartRules, decide, next_delay
from pymgr.tasks.runqueue import RunQueue
from pymgr.tasks.states import TaskState

OK, FAILED, TIMED_OUT, STOPPED, LOST = (
    TaskState.SUCCEEDED,
    TaskState.FAILED,
    TaskState.TIMED_OUT,
    TaskState.STOPPED,
    TaskState.LOST,
)


@pytest.mark.parametrize(
    ("attempt", "base_s", "cap_s", "delay"),
    [
        (1, 1.0, 60.0, 1.0),
        (2, 1.0, 60.0, 2.0),
        (3, 1.0, 60.0, 4.0),
        (6, 1.0, 60.0, 32.0),
        (7, 1.0, 60.0, 60.0),  # 64 capped
        (1000, 1.0, 60.0, 60.0),  # no overflow
        (3, 0.0, 0.0, 0.0),
        (1, 0.5, 0.5, 0.5),
        (4, 0.25, 10.0, 2.0),
    ],
)
def test_next_delay(attempt: int, base_s: float, cap_s: float, delay: float) -> None:
    assert next_delay(attempt, base_s, cap_s) == delay


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 1.0, 2.0), r"^attempt must be >= 1, not 0$"),
        ((1, -1.0, 2.0), r"^base_s must be non-negative, not -1\.0$"),
        ((1, 2.0, 1.0), r"^cap_s \(1\.0\) must be >= base_s \(2\.0\)$"),
    ],
)
def test_next_delay_rejects(args: tuple[int, float, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        next_delay(*args)


ON_FAILURE = RestartRules(
    policy="on-failure", base_s=1.0, cap_s=8.0, max_attempts=3, flap_restarts=2, flap_window_s=10.0
)
ALWAYS = RestartRules(policy="always", base_s=1.0, cap_s=8.0)
NEVER = RestartRules(policy="no")


@pytest.mark.parametrize(
    ("rules", "ended", "attempt", "restarts_at", "now", "expected"),
    [
        (NEVER, FAILED, 1, [], 100.0, Decision(restart=False)),
        (ON_FAILURE, OK, 1, [], 100.0, Decision(restart=False)),
        (ON_FAILURE, FAILED, 1, [], 100.0, Decision(restart=True, delay_s=1.0)),
        (ON_FAILURE, TIMED_OUT, 2, [], 100.0, Decision(restart=True, delay_s=2.0)),
        (ON_FAILURE, STOPPED, 1, [], 100.0, Decision(restart=False)),
        (ON_FAILURE, LOST, 1, [], 100.0, Decision(restart=False)),
        # max_attempts both sides: attempt 2 of 3 restarts, attempt 3 of 3 does not.
        (ON_FAILURE, FAILED, 2, [], 100.0, Decision(restart=True, delay_s=2.0)),
        (
            ON_FAILURE,
            FAILED,
            3,
            [],
            100.0,
            Decision(restart=False, reason="not restarted: max 3 attempts reached"),
        ),
        # flapping both sides: 1 restart within the window is fine, 2 are too many; an old one does not count.
        (ON_FAILURE, FAILED, 2, [95.0], 100.0, Decision(restart=True, delay_s=2.0)),
        (
            RestartRules(policy="on-failure", flap_restarts=2, flap_window_s=10.0),
            FAILED,
            3,
            [95.0, 91.0],
            100.0,
            Decision(restart=False, reason="not restarted: flapping (2 restarts within 10 s)"),
        ),
        (
            RestartRules(policy="on-failure", flap_restarts=2, flap_window_s=10.0),
            FAILED,
            3,
            [95.0, 89.0],
            100.0,
            Decision(restart=True, delay_s=4.0),
        ),
        (
            RestartRules(policy="on-failure", flap_restarts=2, flap_window_s=10.0),
            FAILED,
            3,
            [95.0, 90.0],
            100.0,
            Decision(restart=False, reason="not restarted: flapping (2 restarts within 10 s)"),
        ),
        (ALWAYS, OK, 1, [], 100.0, Decision(restart=True, delay_s=1.0)),
        (ALWAYS, STOPPED, 1, [], 100.0, Decision(restart=False)),
        (ALWAYS, FAILED, 50, [], 100.0, Decision(restart=True, delay_s=8.0)),  # no max_attempts: only the cap
    ],
)
def test_decide(
    rules: RestartRules,
    ended: TaskState,
    attempt: int,
    restarts_at: list[float],
    now: float,
    expected: Decision,
) -> None:
    assert decide(rules, ended, attempt, restarts_at, now) == expected


# -- the run queue -------------------------------------------------------------------------


def queue(**limits: int) -> RunQueue:
    return RunQueue(limits.get)


def test_queue_releases_in_order_within_the_limit_both_sides() -> None:
    q = queue(scan=2)
    for task_id in (1, 2, 3, 4):
        q.add(task_id, "scan")
    assert q.take_ready(0.0) == [(1, "scan"), (2, "scan")]  # at the limit: 2 run
    assert q.take_ready(0.0) == []  # a third would pass it
    q.release("scan")
    assert q.take_ready(0.0) == [(3, "scan")]
    q.release("scan")
    q.release("scan")
    assert q.take_ready(0.0) == [(4, "scan")]
    assert len(q) == 0 and q.busy("scan") == 1


def test_a_full_type_does_not_hold_up_another() -> None:
    q = queue(scan=1)
    q.add(1, "scan")
    q.add(2, "scan")
    q.add(3, "backup")
    assert q.take_ready(0.0) == [(1, "scan"), (3, "backup")]
    assert 2 in q and 3 not in q


def test_not_before_waits_without_holding_up_younger_runs() -> None:
    q = queue(scan=5)
    q.add(1, "scan", not_before=10.0)
    q.add(2, "scan")
    assert q.take_ready(9.0) == [(2, "scan")]
    assert q.next_due(9.0) == 10.0
    assert q.take_ready(9.999) == []
    assert q.take_ready(10.0) == [(1, "scan")]
    assert q.next_due(10.0) is None


def test_next_due_ignores_runs_of_a_full_type() -> None:
    q = queue(scan=1)
    q.occupy("scan")
    q.add(1, "scan", not_before=5.0)
    assert q.next_due(0.0) is None
    q.release("scan")
    assert q.next_due(0.0) == 5.0


def test_ids_leave_in_id_order_even_when_added_out_of_order() -> None:
    q = queue()
    for task_id in (5, 2, 9, 1):
        q.add(task_id, "t")
    assert [task_id for task_id, _ in q.take_ready(0.0)] == [1, 2, 5, 9]


def test_remove_and_limit_changes_apply_at_once() -> None:
    limits = {"scan": 1}
    q = RunQueue(limits.get)
    q.add(1, "scan")
    q.add(2, "scan")
    assert q.remove(1) and not q.remove(1)
    q.occupy("scan")
    assert q.take_ready(0.0) == []
    limits["scan"] = 2  # a reload raised the limit
    assert q.take_ready(0.0) == [(2, "scan")]
