"""Opt-in retries: which failures are tried again, and how long to wait before the next try.

Rules:
- Retried: 429 (``RateLimited``) and 503 (``Unavailable``: the daemon did not run
  the call), waiting what their ``Retry-After`` says (capped at ``max_backoff_s``);
  and a connection that could not be made (refused, no socket file, connect
  timeout): the request never reached the daemon.
- Never retried: a request that may have reached the daemon (a read timeout,
  a connection broken after sending), unless it is a ``GET``, which changes
  nothing; and every other error (403, 404, 409, ``not_recorded``, ...).
- The wait before retry ``n`` (from 0) is ``backoff_s * 2**n``, capped at
  ``max_backoff_s``, times a random factor in [0.5, 1] ("equal jitter", so
  clients that failed together do not come back together).
- The total time is bounded: at most ``attempts - 1`` waits of at most
  ``max_backoff_s`` each, plus each attempt's own ``timeout_s``.
- Pure: no I/O, no sleeping; the two clients sleep the way they do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pymgr.client.replies import ConnectionFailed
from pymgr.errors import PymgrError, RateLimited, Unavailable

#: Methods that change nothing on the daemon: safe to send again even if the first may have arrived.
_SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Retry:
    """How a client retries: ``Client(retry=Retry(attempts=3))``; off unless given.

    Args:
        attempts: tries in all, the first included (1: no retry).
        backoff_s: the wait before the first retry (doubled for each next one).
        max_backoff_s: the longest wait between two tries, ``Retry-After`` included.
    """

    attempts: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"Retry attempts must be at least 1, not {self.attempts!r}")
        if not self.backoff_s >= 0:
            raise ValueError(f"Retry backoff_s must be 0 or more, not {self.backoff_s!r}")
        if not self.max_backoff_s >= self.backoff_s:
            raise ValueError(
                f"Retry max_backoff_s must be at least backoff_s ({self.backoff_s!r}), not {self.max_backoff_s!r}"
            )

    def delay_s(self, retry: int, error: PymgrError, method: str) -> float | None:
        """Seconds to wait before retry number ``retry`` (0 the first) after ``error``; None: raise it.

        Args:
            method: the HTTP method of the request that failed.
        """
        if retry + 1 >= self.attempts or not retryable(error, method):
            return None
        backoff = min(self.max_backoff_s, self.backoff_s * 2.0**retry) * random.uniform(0.5, 1.0)
        retry_after = _retry_after_s(error)
        return backoff if retry_after is None else min(self.max_backoff_s, max(retry_after, backoff))

    @property
    def max_total_wait_s(self) -> float:
        """The most time spent waiting between tries (each try's own timeout comes on top)."""
        return (self.attempts - 1) * self.max_backoff_s


def retryable(error: PymgrError, method: str) -> bool:
    """Whether a request that failed with ``error`` may be sent again (see the module rules)."""
    if isinstance(error, ConnectionFailed):
        return not error.request_sent or method in _SAFE_METHODS
    return isinstance(error, RateLimited | Unavailable) and error.http_status in (429, 503)


def _retry_after_s(error: PymgrError) -> float | None:
    """The daemon's ``Retry-After`` (``replies.decode`` puts the header in ``details`` when the body has none)."""
    value = (error.details or {}).get("retry_after_s")
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None
