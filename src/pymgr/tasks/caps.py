"""Caps on active runs: how many may be queued or running at once, in all and per caller (no I/O).

Rules:
- A run is active from the moment its start is staged until its record
  ends; runs found at recovery and restarts count too. Each run counts
  once, against the caller who started it (``started_by``).
- A start past a cap is refused (``Conflict``, HTTP 409, legacy err_code
  5) before anything is stored: the message names the cap, its config key
  and its value. A start of several runs at once (``SCAN_MODULE``) fits
  whole or is refused whole.
- Refused, not queued: a refusal tells the caller at once, stores nothing
  that will not run, and keeps the store and the queue bounded. Within the
  caps, a type's ``max_concurrent`` still queues runs.
- A restart (a policy's next attempt) is never refused: it replaces the
  run that ended, so the count does not grow.
- A caller is who the transport vouches for: a Unix user by uid, a signed
  TCP request by its key id, a TLS client by its certificate; every holder
  of the legacy secret is one caller (the secret is all that tells them
  apart).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from pymgr.errors import Conflict


def caller_of(started_by: Mapping[str, Any]) -> str:
    """The caller a run counts against, in words (``started_by`` is ``Identity.to_dict()``)."""
    transport = started_by.get("transport")
    if transport == "unix":
        return f"uid {started_by.get('uid')}"
    if started_by.get("key_id"):
        return f"key {started_by['key_id']}"
    if started_by.get("cert"):
        return f"certificate {started_by['cert']}"
    if transport == "legacy":
        return "the legacy secret"
    if transport == "tcp":
        return f"tcp {str(started_by.get('peer') or '').rsplit(':', 1)[0]}"
    return str(transport)


class ActiveRuns:
    """Active runs by caller (see the module rules)."""

    def __init__(self) -> None:
        self._callers: dict[int, str] = {}
        self._counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._callers)

    def of(self, started_by: Mapping[str, Any]) -> int:
        """Active runs of the caller of ``started_by``."""
        return self._counts[caller_of(started_by)]

    def add(self, task_id: int, started_by: Mapping[str, Any]) -> None:
        """Count a run (again: no change)."""
        if task_id not in self._callers:
            caller = self._callers[task_id] = caller_of(started_by)
            self._counts[caller] += 1

    def discard(self, task_id: int) -> None:
        """A run ended (or its start failed): it counts no more."""
        caller = self._callers.pop(task_id, None)
        if caller is not None:
            self._counts[caller] -= 1
            if not self._counts[caller]:
                del self._counts[caller]

    def check(self, started_by: Mapping[str, Any], count: int, max_active: int, max_per_caller: int) -> None:
        """Refuse ``count`` more runs of this caller past a cap.

        Raises:
            Conflict: the daemon's cap (``max_active``) or the caller's (``max_per_caller``) would be passed.
        """
        caller = caller_of(started_by)
        mine = self._counts[caller]
        if mine + count > max_per_caller:
            raise Conflict(
                f"task start refused: {caller} has {mine} active run(s) and asks for {count} more; "
                f"the cap per caller is {max_per_caller} ([tasks] max_active_per_caller): "
                "start more when some have ended",
                details={
                    "cap": "max_active_per_caller",
                    "value": max_per_caller,
                    "active": mine,
                    "asked": count,
                },
            )
        total = len(self._callers)
        if total + count > max_active:
            raise Conflict(
                f"task start refused: {total} run(s) are active and {count} more were asked for; "
                "the daemon's cap "
                f"is {max_active} ([tasks] max_active): start more when some have ended",
                details={"cap": "max_active", "value": max_active, "active": total, "asked": count},
            )
