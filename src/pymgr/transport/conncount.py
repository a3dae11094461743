"""Counting open connections per listener and per caller, to cap both.

Rules:
- ``open`` either admits a connection (and counts it) or says which cap it
  would pass; a refused connection is not counted, so its ``close`` must not
  be called. Counts never go negative; keys whose count drops to zero are
  removed, so memory follows the connections that are open now.
- The per-caller cap is across every listener that shares the counter: a
  caller cannot dodge it by connecting to another of our sockets.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

__all__ = ["ConnectionCounter"]


class ConnectionCounter:
    """Open connections by listener and by caller key.

    Raises:
        ValueError: a cap that is not positive.
    """

    def __init__(self, max_per_listener: int, max_per_caller: int) -> None:
        if max_per_listener < 1 or max_per_caller < 1:
            raise ValueError(f"connection caps must be positive, not {max_per_listener} and {max_per_caller}")
        self.max_per_listener = max_per_listener
        self.max_per_caller = max_per_caller
        self._listeners: Counter[str] = Counter()
        self._callers: Counter[str] = Counter()

    def open(self, listener: str, caller: str) -> Literal["listener", "caller"] | None:
        """Admit and count one connection, or name the cap it would pass."""
        if self._listeners[listener] >= self.max_per_listener:
            return "listener"
        if self._callers[caller] >= self.max_per_caller:
            return "caller"
        self._listeners[listener] += 1
        self._callers[caller] += 1
        return None

    def close(self, listener: str, caller: str) -> None:
        """Forget one admitted connection."""
        for counter, key in ((self._listeners, listener), (self._callers, caller)):
            if counter[key] <= 1:
                counter.pop(key, None)
            else:
                counter[key] -= 1

    def count(self, listener: str | None = None, caller: str | None = None) -> int:
        """Open connections of one listener or one caller (for tests and metrics)."""
        if listener is not None:
            return self._listeners.get(listener, 0)
        return self._callers.get(caller or "", 0)
