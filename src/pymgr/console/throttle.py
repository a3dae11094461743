"""Login attempts, limited per user name and per address, with delays that grow with each failure.

Rules:
- After ``free`` failures of a name (known or not: counting only real names would tell which exist)
  or of an address, the next attempt must wait ``delay_s``, then twice that after each further
  failure, up to ``max_delay_s``. An attempt during the wait is refused without checking the password.
- A success clears its name's count, not its address's (one account of the attacker's own must not
  buy more guesses at others from the same address).
- Memory is bounded: at most ``max_keys`` names and addresses are tracked, the oldest forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: Names and addresses tracked at most (each a few hundred bytes).
MAX_KEYS = 100_000


@dataclass(slots=True)
class _Failures:
    count: int
    until_s: float


class LoginThrottle:
    def __init__(
        self,
        free: int,
        delay_s: float,
        max_delay_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self._free = free
        self._delay_s = delay_s
        self._max_delay_s = max_delay_s
        self._clock = clock
        self._max_keys = max_keys
        self._failures: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    def wait_s(self, name: str, address: str) -> float:
        """Seconds before ``name`` may try again from ``address`` (0: now)."""
        now = self._clock()
        waits = [f.until_s - now for k in (("name", name), ("addr", address)) if (f := self._failures.get(k))]
        return max([0.0, *waits])

    def failed(self, name: str, address: str) -> None:
        now = self._clock()
        for key in (("name", name), ("addr", address)):
            failures = self._failures.pop(key, None) or _Failures(0, now)
            failures.count += 1
            over = failures.count - self._free
            if over > 0:
                failures.until_s = now + min(self._max_delay_s, self._delay_s * 2 ** min(over - 1, 60))
            self._failures[key] = failures
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        self._failures.pop(("name", name), None)
