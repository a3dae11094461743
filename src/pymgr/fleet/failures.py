"""Stream entries that failed to be taken up: counted one by one, so one bad entry never holds back the next.

Rules (the agent's job streams and the control stream follow them alike):
- An entry whose handling raised (a Redis answer such as ``WRONGTYPE``, or
  a bug) stays pending and the entries after it are taken up all the same.
- It is tried again ``retry_after_s`` later at the soonest (an error of a
  failover passes meanwhile), never sooner: a re-read of the pending
  entries skips it until then.
- Its ``most``-th failure gives it up: the caller acknowledges it its own
  way (a stop refused, a job dead-lettered) and it is forgotten here.
- A lost Redis is not an entry's failure: the caller's session starts over,
  and the counts are kept across sessions (in memory: a restart starts them
  again, which only delays the give-up).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["EntryFailures"]

#: An entry's key: its id (one stream), or (stream, id).
K = TypeVar("K", bound=Hashable)

log = logging.getLogger("pymgr.fleet")


@dataclass(slots=True)
class _Failed:
    count: int
    retry_at: float
    #: What the caller needs to try it again (the entry's fields, as read).
    payload: Any


class EntryFailures(Generic[K]):
    """The entries that failed and are still pending, by key.

    Args:
        most: failures after which an entry is given up (``[fleet] max_deliveries``).
        retry_after_s: the least wait before an entry is tried again (``[fleet] reconnect_max_s``).
    """

    def __init__(self, most: int, retry_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._most = most
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._failed: dict[K, _Failed] = {}

    def due(self, key: K) -> bool:
        """Whether the entry may be tried now (it never failed, or its wait is over)."""
        failed = self._failed.get(key)
        return failed is None or self._clock() >= failed.retry_at

    def failed(self, key: K, name: str, exc: BaseException, payload: Any = None) -> str | None:
        """Count a failure of entry ``key`` (``name`` in the log); why it is given up, or None to keep it.

        Returns:
            None: it stays pending, tried again later; a text: its last failure and how many, to record.
        """
        count = self._failed[key].count + 1 if key in self._failed else 1
        why = f"{type(exc).__name__}: {exc}"
        if count < self._most:
            log.warning("fleet: entry %s failed (try %d of %d): %s", name, count, self._most, why)
            self._failed[key] = _Failed(count, self._clock() + self._retry_after_s, payload)
            return None
        self._failed.pop(key, None)
        return f"entry {name} failed {count} times and is given up: {why}"

    def forget(self, key: K) -> None:
        """The entry is done with (taken up, or acknowledged)."""
        self._failed.pop(key, None)

    def due_now(self) -> list[tuple[K, Any]]:
        """The failed entries whose wait is over, with their payloads: to try again."""
        now = self._clock()
        return [(key, failed.payload) for key, failed in self._failed.items() if now >= failed.retry_at]
