"""Request rate per identity: a token bucket per caller.

Rules:
- The bucket is a pure function of (state, now): ``take`` returns the new
  state and how long to wait, so tests drive it with plain numbers.
- A bucket holds at most ``burst`` tokens and refills at ``rate_per_s``; a
  request takes one token or is refused with the seconds until one is back.
- Memory is bounded: at most ``max_keys`` buckets. When a new caller would
  pass that, full buckets are dropped first (a full bucket is the same as
  none); if all are in use, the oldest is dropped, which gives that caller a
  fresh burst: the bound on memory wins over the bound on that one caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Bucket", "RateLimiter", "take"]

#: A bucket: (tokens left, monotonic seconds when counted). A plain tuple: one
#: is made per request, and a tuple costs a fraction of a dataclass.
Bucket = tuple[float, float]


def take(bucket: Bucket | None, now: float, rate_per_s: float, burst: float) -> tuple[Bucket, float]:
    """Take one token.

    Args:
        bucket: the caller's bucket, or None for a new caller (a full bucket).
        now: monotonic seconds; a clock that went backwards counts as no time passing.

    Returns:
        The new bucket, and 0.0 if the request may go on, else the seconds
        until a token is back (the bucket is unchanged then).
    """
    if bucket is None:
        tokens = float(burst)
    else:
        tokens = min(burst, bucket[0] + max(0.0, now - bucket[1]) * rate_per_s)
    if tokens >= 1.0:
        return (tokens - 1.0, now), 0.0
    return (tokens, now), (1.0 - tokens) / rate_per_s


class RateLimiter:
    """Buckets by caller key (``uid:33``, ``key:ci``, ``host:10.0.0.5``).

    Raises:
        ValueError: a rate, burst or size that is not positive.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError(
                f"rate_per_s, burst and max_keys must be positive, not {rate_per_s}, {burst}, {max_keys}"
            )
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}

    def check(self, key: str) -> float:
        """Take a token for ``key``: 0.0 if allowed, else the seconds to wait."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None and len(self._buckets) >= self.max_keys:
            self._evict(now)
        new, wait_s = take(bucket, now, self.rate_per_s, self.burst)
        self._buckets[key] = new
        return wait_s

    def __len__(self) -> int:
        return len(self._buckets)

    def _evict(self, now: float) -> None:
        refill_s = self.burst / self.rate_per_s
        full = [k for k, b in self._buckets.items() if now - b[1] >= refill_s]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]
