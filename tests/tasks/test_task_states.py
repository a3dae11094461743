"""The task state table, tested move by move."""

from __future__ import annotations

import itertools
import re

import pytest

from pymgr.errors import PymgrInternalError
from pymgr.tasks.states import ACTIVE, TERMINAL, TRANSITIONS, IllegalTransition, TaskState, transition

Q, R, OK, F, S, T, L = (
    TaskState.QUEUED,
    TaskState.RUNNING,
    TaskState.SUCCEEDED,
    TaskState.FAILED,
    TaskState.STOPPED,
    TaskState.TIMED_OUT,
    TaskState.LOST,
)

#: Written out by hand, not derived from TRANSITIONS, so the table is checked against intent.
LEGAL = {(Q, R), (Q, F), (Q, S), (R, OK), (R, F), (R, S), (R, T), (R, L)}

ALL_MOVES = list(itertools.product(TaskState, repeat=2))


def test_values_are_lowercase_names() -> None:
    assert [s.value for s in TaskState] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "stopped",
        "timed_out",
        "lost",
    ]
    assert all(s.value == s.name.lower() for s in TaskState)
    assert TaskState("running") is R


def test_table_has_every_state() -> None:
    assert set(TRANSITIONS) == set(TaskState)


def test_terminal_and_active() -> None:
    assert {OK, F, S, T, L} == TERMINAL
    assert {Q, R} == ACTIVE


@pytest.mark.parametrize(("current", "new"), sorted(LEGAL))
def test_legal_move(current: TaskState, new: TaskState) -> None:
    assert transition(current, new) is new


@pytest.mark.parametrize(("current", "new"), [m for m in ALL_MOVES if m not in LEGAL])
def test_illegal_move(current: TaskState, new: TaskState) -> None:
    with pytest.raises(
        IllegalTransition, match=rf"^task state cannot go from '{current.value}' to '{new.value}' \(legal: "
    ):
        transition(current, new)


def test_illegal_move_names_the_legal_ones() -> None:
    with pytest.raises(
        IllegalTransition,
        match=r"^task state cannot go from 'queued' to 'succeeded' \(legal: failed, running, stopped\)\. ",
    ):
        transition(Q, OK)


def test_illegal_move_from_terminal_says_terminal() -> None:
    with pytest.raises(
        IllegalTransition,
        match=r"^task state cannot go from 'stopped' to 'running' \(legal: none, 'stopped' is terminal\)\. ",
    ) as info:
        transition(S, R)
    assert info.value.details == {"from": "stopped", "to": "running"}


def test_illegal_move_is_an_internal_error() -> None:
    assert issubclass(IllegalTransition, PymgrInternalError)
    with pytest.raises(IllegalTransition, match=re.escape("please file a bug")):
        transition(L, L)
