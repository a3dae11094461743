"""A deadline that moves at every request, on one event-loop timer.

A connection moves its deadline several times per request (head, body,
keep-alive). Cancelling and re-arming a loop timer each time costs more than
leaving the armed timer alone when the deadline moves later: the timer fires
early, its owner sees the deadline still ahead (``rearm_if_early``) and
waits again. The timer is replaced only when the deadline moves earlier.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Deadline"]


class Deadline:
    """When what a connection waits for is due; ``on_timer`` runs when the timer fires (maybe early)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_timer: Callable[[], None]) -> None:
        self._loop = loop
        self._on_timer = on_timer
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        #: Loop time when what is awaited is due; 0.0 while nothing is (a firing timer then finds nothing due).
        self.at = 0.0

    def set(self, timeout_s: float) -> None:
        """Due ``timeout_s`` from now; the timer is moved only if it would fire late."""
        at = self.at = self._loop.time() + timeout_s
        if self._timer is not None:
            if self._timer_at <= at:
                return  # it fires first, sees the later deadline and re-arms
            self._timer.cancel()
        self._arm(at)

    def clear(self) -> None:
        """Nothing is due (until the next ``set``); an armed timer still fires, and finds nothing."""
        self.at = 0.0

    def stop(self) -> None:
        """Cancel the timer: the connection is ending."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def rearm_if_early(self) -> bool:
        """In ``on_timer``: whether the deadline is still ahead, the timer then armed for it."""
        if self._loop.time() < self.at:
            self._arm(self.at)
            return True
        return False

    def _arm(self, at: float) -> None:
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._on_timer()
