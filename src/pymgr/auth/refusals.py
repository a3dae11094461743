"""Refused requests, counted: one audit line per source and window, in a file of their own.

Rules:
- A refusal is a request that was turned away before its action ran: a
  bad signature (401), the rate limit (429), a denial by the policy (403),
  an unknown module or action (404), params over the size bound (413) or
  not fitting the action (400), an audit log that cannot hold the record
  (503). Nothing ran, so there is nothing to record one by one: who was
  refused, what they asked for, how often and when is kept, the params are not.
- They are counted per *source* (the caller's rate-limit key, as the guard
  names it: ``uid:N``, ``key:ID``, ``tcp:HOST`` ...) and per window of
  ``window_s`` seconds of the clock (windows start at multiples of it). At
  the end of a window, each source's count becomes one line: ``time`` (the
  first refusal), ``last``, ``refused`` (the count), ``source``,
  ``transport``, ``codes`` (count per error code), ``operations`` (count per
  operation asked, the first ``max_operations`` distinct ones) and
  ``other_operations`` (the count of the rest). A source whose refused calls
  were a delegate's for persons also has ``persons`` (count per person, the
  first ``max_operations`` distinct ones: a delegate can invent any number
  of names) and ``other_persons``; the source stays the delegate's.
- A window holds at most ``max_sources`` sources; refusals from any further
  source are counted together on one line whose source is ``[other sources]``.
  So the lines a flood can cause are bounded by ``(max_sources + 1)`` per
  window, whatever its rate, and every refusal is counted exactly once.
- A window is written when a refusal of a later window arrives, when a timer
  set for its end fires (while an event loop runs), or on ``flush``/``close``
  (shutdown). A line that cannot be written is an error in the daemon's log
  naming the counts it held; the refusals stand (their requests failed anyway).
- The lines go to their own ``AuditLog`` (own file, own rotation): no number of
  refusals can rotate the records of calls that ran out of the audit log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymgr.auth.auditfile import AuditLog

__all__ = [
    "DEFAULT_MAX_OPERATIONS",
    "DEFAULT_MAX_SOURCES",
    "DEFAULT_WINDOW_S",
    "OTHER_SOURCES",
    "RefusalTally",
]

log = logging.getLogger("pymgr.audit")

#: The source of the line that counts every source past ``max_sources`` in a window.
OTHER_SOURCES = "[other sources]"
#: One line per source per second: a flood's history stays readable, and a source's line comes
#: within a second of its first refusal.
DEFAULT_WINDOW_S = 1.0
#: Sources with a line of their own per window: far more than the callers a host has (a few uids,
#: keys and addresses), few enough that a flood from many addresses writes at most 65 lines a second.
DEFAULT_MAX_SOURCES = 64
#: Operations named per line: enough for a client probing a handful of actions.
DEFAULT_MAX_OPERATIONS = 8
#: A window's timer fires this long after the window's end, so that a clock read at the
#: timer's time is surely in the next window.
_TIMER_SLACK_S = 0.05


@dataclass(slots=True)
class _Count:
    """What one source was refused in one window."""

    transport: str
    first: float
    last: float = 0.0
    refused: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    operations: dict[str, int] = field(default_factory=dict)
    other_operations: int = 0
    persons: dict[str, int] = field(default_factory=dict)
    other_persons: int = 0

    def add(
        self, now: float, transport: str, operation: str, code: str, max_operations: int, person: str | None
    ) -> None:
        self.refused += 1
        self.last = now
        if transport != self.transport:
            self.transport = "*"  # only the other-sources line mixes transports
        self.codes[code] = self.codes.get(code, 0) + 1
        operations = self.operations
        if operation in operations:
            operations[operation] += 1
        elif len(operations) < max_operations:
            operations[operation] = 1
        else:
            self.other_operations += 1
        if person is None:
            return
        if person in self.persons:
            self.persons[person] += 1
        elif len(self.persons) < max_operations:
            self.persons[person] = 1
        else:
            self.other_persons += 1

    def line(self, source: str) -> bytes:
        fields = {
            "time": iso_time(self.first),
            "last": iso_time(self.last),
            "refused": self.refused,
            "source": source,
            "transport": self.transport,
            "codes": self.codes,
            "operations": self.operations,
            "other_operations": self.other_operations,
        }
        if self.persons or self.other_persons:
            fields |= {"persons": self.persons, "other_persons": self.other_persons}
        return (
            json.dumps(
                fields,
                ensure_ascii=False,
                separators=(",", ":"),
            )
            + "\n"
        ).encode()


def iso_time(t: float) -> str:
    """UTC, ISO 8601, milliseconds (the audit's ``time`` format)."""
    second, millis = divmod(int(t * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{millis:03d}Z"


class RefusalTally:
    """Counts refusals per source and window and writes one line per source at the window's end.

    Args:
        audit_log: the refusals' own file.
        window_s: the window's length.
        max_sources: distinct sources per window with a line of their own.
        max_operations: distinct operations named per line.
        clock: wall-clock seconds (``time.time``).

    Raises:
        ValueError: a limit that is not positive.
    """

    def __init__(
        self,
        audit_log: AuditLog,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        max_sources: int = DEFAULT_MAX_SOURCES,
        max_operations: int = DEFAULT_MAX_OPERATIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (window_s > 0 and math.isfinite(window_s)) or max_sources < 1 or max_operations < 1:
            raise ValueError(
                f"refusal window_s, max_sources and max_operations must be positive, not "
                f"{window_s}, {max_sources} and {max_operations}"
            )
        self.log = audit_log
        self.window_s = window_s
        self.max_sources = max_sources
        self.max_operations = max_operations
        self._clock = clock
        self._window: int | None = None
        self._counts: dict[str, _Count] = {}
        self._others: _Count | None = None
        self._timer: asyncio.TimerHandle | None = None

    def add(self, source: str, transport: str, operation: str, code: str, person: str | None = None) -> None:
        """Count one refusal of ``source`` (writing the previous window's lines first if it is over).

        Args:
            person: the person a delegate asked for (``console:alice``), counted on the delegate's line.
        """
        now = self._clock()
        window = math.floor(now / self.window_s)
        if window != self._window:
            self.flush()
            self._window = window
            self._set_timer(now)
        count = self._counts.get(source)
        if count is None:
            if len(self._counts) < self.max_sources:
                count = self._counts[source] = _Count(transport, now)
            else:
                count = self._others
                if count is None:
                    count = self._others = _Count(transport, now)
        count.add(now, transport, operation, code, self.max_operations, person)

    def flush(self) -> None:
        """Write the current window's lines now (shutdown; tests)."""
        lines = [count.line(source) for source, count in self._counts.items()]
        if self._others is not None:
            lines.append(self._others.line(OTHER_SOURCES))
        self._counts = {}
        self._others = None
        self._window = None
        for line in lines:
            try:
                self.log.write_line(line)
            except OSError as exc:
                log.error(
                    "AUDIT LOG WRITE FAILED for refusals (%s): %s lost: %s",
                    self.log.path,
                    exc.strerror or exc,
                    line.decode().rstrip(),
                )

    def close(self) -> None:
        """Write what is counted and stop the timer (the file stays open: its owner closes it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()

    def _set_timer(self, now: float) -> None:
        """Write the window at its end even if no later refusal comes (only under an event loop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        window = self._window
        if window is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (tools, unit tests): the next refusal or flush writes it
            return
        delay = (window + 1) * self.window_s - now + _TIMER_SLACK_S
        self._timer = loop.call_later(min(max(delay, 0.0), self.window_s + _TIMER_SLACK_S), self._window_over)

    def _window_over(self) -> None:
        # Written even if the wall clock says the window is not quite over (it was stepped back): a
        # refusal still in that window then starts a second line for it; every refusal is counted once.
        self._timer = None
        self.flush()
