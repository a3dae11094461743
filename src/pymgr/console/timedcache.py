"""A small cache of what the daemon told the console, kept for a few seconds per key.

The tasks page's start form needs the person's listing and the task types: two calls to the
daemon on every page, a third of the page's CPU (docs/performance.md, "Web console"), for
answers that change only when the daemon's config is reloaded.

Rules:
- An entry is used for ``ttl_s`` after it was made, then made again; ``ttl_s`` 0 keeps nothing.
- At most ``max_entries``; the oldest goes first. A failed ``make`` keeps nothing.
- Only what is shown is kept: the daemon still judges every call a page makes (a stale form
  at worst offers a type the person may no longer start, and the start is refused, 403).
- cachetools' TTLCache does this too; it is one dict and a clock here, not worth a dependency.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class TimedCache(Generic[T]):
    """Args:
    ttl_s: seconds an entry is used.
    max_entries: entries kept at most.
    clock: monotonic seconds (a test passes its own).
    """

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float]) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: dict[Hashable, tuple[float, T]] = {}

    async def get(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        """The entry of ``key`` if younger than ``ttl_s``, else what ``make()`` returns (then kept)."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self._ttl_s:
            return entry[1]
        value = await make()
        if self._ttl_s > 0:
            self._entries.pop(key, None)
            while len(self._entries) >= self._max:
                del self._entries[next(iter(self._entries))]  # dicts keep insertion order: the oldest
            self._entries[key] = (now, value)
        return value
