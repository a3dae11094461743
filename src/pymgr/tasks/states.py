"""The states of a task run and the one table of legal transitions.

Rules (after h11's ``_state.py``):
- Everything that decides which state may follow which lives in this file,
  in ``TRANSITIONS``; nothing else compares states to decide a move.
- A move the table does not allow is a bug in pymgr, never a caller's
  mistake: ``transition`` raises ``IllegalTransition`` (an internal error).
- Terminal states have no way out: an ended run never runs again (a retry
  is a new run with a new id).
"""

from __future__ import annotations

from enum import Enum

from pymgr.errors import PymgrInternalError


class TaskState(str, Enum):
    """Where a run is in its life; stored and shown as the lowercase value."""

    #: Recorded and waiting for its process to be spawned.
    QUEUED = "queued"
    #: Its process was spawned and has not been reaped yet.
    RUNNING = "running"
    #: Its process exited with code 0 on its own.
    SUCCEEDED = "succeeded"
    #: It could not be spawned, exited non-zero, or was killed by a signal nobody here sent.
    FAILED = "failed"
    #: Someone stopped it (``cancel_source`` says who: user, shutdown).
    STOPPED = "stopped"
    #: It ran longer than its type's ``timeout_s`` and was stopped (``cancel_source`` "deadline").
    TIMED_OUT = "timed_out"
    #: It cannot be accounted for: its exit status is unknowable (the keeper
    #: was gone when it ended) or its process vanished (host reboot); ``error`` says why.
    LOST = "lost"


#: Every legal move; a state missing as a key, or a target missing from its
#: set, is an illegal move.
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset({TaskState.RUNNING, TaskState.FAILED, TaskState.STOPPED}),
    TaskState.RUNNING: frozenset(
        {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.STOPPED, TaskState.TIMED_OUT, TaskState.LOST}
    ),
    TaskState.SUCCEEDED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.STOPPED: frozenset(),
    TaskState.TIMED_OUT: frozenset(),
    TaskState.LOST: frozenset(),
}

#: States a run never leaves.
TERMINAL: frozenset[TaskState] = frozenset(state for state, targets in TRANSITIONS.items() if not targets)

#: States of a run that still holds (or will hold) a process: its key is taken.
ACTIVE: frozenset[TaskState] = frozenset(TaskState) - TERMINAL


class IllegalTransition(PymgrInternalError):
    """A run was asked to move to a state the table does not allow from where it is."""


def transition(current: TaskState, new: TaskState) -> TaskState:
    """Check one move against ``TRANSITIONS``.

    Returns:
        ``new``, so callers can write ``state = transition(state, NEW)``.

    Raises:
        IllegalTransition: naming both states and the moves that are legal.
    """
    allowed = TRANSITIONS[current]
    if new not in allowed:
        legal = ", ".join(sorted(s.value for s in allowed)) or f"none, {current.value!r} is terminal"
        raise IllegalTransition(
            f"task state cannot go from {current.value!r} to {new.value!r} (legal: {legal})",
            details={"from": current.value, "to": new.value},
        )
    return new


def end_state(
    cancel_source: str | None, *, exit_code: int | None, signal: str | None, exited_on_its_own: bool
) -> TaskState:
    """The state a run ends in, from its cancel source and the keeper's exit status."""
    # A stop or deadline that came while the keeper stopped what an exited leader left is not the outcome.
    if cancel_source == "deadline" and not exited_on_its_own:
        return TaskState.TIMED_OUT
    if cancel_source is not None and not exited_on_its_own:
        return TaskState.STOPPED
    if exit_code is None and signal is None:
        return TaskState.LOST
    if signal is not None or exit_code != 0:
        return TaskState.FAILED
    return TaskState.SUCCEEDED
