"""Restart policy: whether an ended run gets another attempt, and after how long (pure functions).

Rules:
- ``restart = "no"`` never restarts; ``"on-failure"`` restarts a run that
  ended ``failed`` or ``timed_out``; ``"always"`` also one that
  ``succeeded``. A run that was ``stopped`` (a person or the shutdown said
  so) or ``lost`` (nobody knows how it ended) is never restarted.
- ``max_attempts`` counts every attempt, the first included; the run that
  used the last one ends with "max N attempts reached".
- Flapping guard: when ``flap_restarts`` restarts already happened within
  the last ``flap_window_s``, the run ends with "flapping: ..." instead of
  a restart: a task that dies at once should not be restarted forever, even
  when ``max_attempts`` is unlimited.
- Back-off before attempt N+1 is ``base_s * 2**(N-1)``, capped at ``cap_s``.
- Everything here is a pure function of its arguments (arq's ``next_cron``
  is the model): times are passed in, never read from a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pymgr.tasks.states import TaskState

#: The config's ``restart`` values.
RestartPolicy = Literal["no", "on-failure", "always"]

#: Which end states each policy restarts.
RESTARTED: dict[str, frozenset[TaskState]] = {
    "no": frozenset(),
    "on-failure": frozenset({TaskState.FAILED, TaskState.TIMED_OUT}),
    "always": frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.TIMED_OUT}),
}

#: Exponents above this give the cap anyway; stopping here keeps 2**n small.
_MAX_EXPONENT = 62


def next_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait before the attempt after ``attempt``.

    Args:
        attempt: the attempt that just ended, 1 for the first run.
        base_s: the delay after the first attempt.
        cap_s: the longest delay.

    Raises:
        ValueError: ``attempt`` < 1, a negative delay, or ``cap_s`` < ``base_s``.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, not {attempt}")
    if base_s < 0:
        raise ValueError(f"base_s must be non-negative, not {base_s}")
    if cap_s < base_s:
        raise ValueError(f"cap_s ({cap_s}) must be >= base_s ({base_s})")
    return float(min(cap_s, base_s * 2 ** min(attempt - 1, _MAX_EXPONENT)))


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens after a run ended."""

    #: Start another attempt.
    restart: bool
    #: Seconds to wait before it (when restarting).
    delay_s: float = 0.0
    #: Why there is no restart although the policy wanted one (None otherwise).
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RestartRules:
    """A task type's restart settings."""

    policy: RestartPolicy = "no"
    base_s: float = 1.0
    cap_s: float = 60.0
    max_attempts: int | None = None
    flap_restarts: int = 5
    flap_window_s: float = 60.0


def decide(
    rules: RestartRules, ended: TaskState, attempt: int, restarts_at: Sequence[float], now: float
) -> Decision:
    """Whether a run that ended in ``ended`` gets another attempt.

    Args:
        attempt: the attempt that ended (1 for the first run).
        restarts_at: when the earlier restarts of this run's chain started
            (epoch seconds, any order; only the recent ones matter).
        now: the current time (epoch seconds).
    """
    if ended not in RESTARTED[rules.policy]:
        return Decision(restart=False)
    if rules.max_attempts is not None and attempt >= rules.max_attempts:
        return Decision(restart=False, reason=f"not restarted: max {rules.max_attempts} attempts reached")
    recent = sum(1 for moment in restarts_at if now - moment <= rules.flap_window_s)
    if recent >= rules.flap_restarts:
        return Decision(
            restart=False,
            reason=f"not restarted: flapping ({recent} restarts within {rules.flap_window_s:g} s)",
        )
    return Decision(restart=True, delay_s=next_delay(attempt, rules.base_s, rules.cap_s))
