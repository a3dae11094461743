"""``SCAN_MODULE``: the 2014 design's scan module, on top of background tasks.

Its legacy clients send ``module:SCAN_MODULE``, ``action:start`` or
``action:stop`` and ``task_ids:1,2``; each id maps to one run of the task
type ``scan`` with key ``scan:<id>`` and params ``{"task_id": <id>}``.

Rules:
- ``task_ids`` is a list of ints, or a string of comma-separated ints (the
  legacy protocol only sends strings). Items are stripped; an empty,
  negative or non-integer item is a ParamsInvalid naming that item (legacy
  err_code 4). At most ``[tasks] scan_max_task_ids`` ids per request (never
  more than ``MAX_TASK_IDS``); more is a ParamsInvalid, nothing started.
- A start fits the caps on active runs whole or is refused whole
  (``TaskManager.start_many``): a request never starts some of its ids.
- Replies come at once: "start ok", "stop ok". Processes start and stop in
  the background.
- A repeated id in one request counts once. Starting an id whose scan is
  queued or running is skipped (start is idempotent by key); stopping an id
  with no active scan is skipped.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from pymgr.core.identity import Identity
from pymgr.core.registry import Module, action
from pymgr.errors import ParamsInvalid, Unavailable
from pymgr.tasks.manager import TaskManager
from pymgr.tasks.states import ACTIVE

#: Most ids in one request whatever the config says (``[tasks] scan_max_task_ids``, 32 by default,
#: may not exceed it): a scan is a long-running process per id, and a request for more is a client
#: bug, not a workload.
MAX_TASK_IDS = 1000

#: The task type every scan runs as ([tasks.types.scan] in the config).
SCAN_TYPE = "scan"


def _parse_ids(value: Any) -> list[int]:
    """The ids of ``task_ids``, from "1,2" or [1, 2]; raises ValueError naming the bad item."""
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError(f'must be a list of ids or a string like "1,2", not {type(value).__name__}')
    if not items:
        raise ValueError("must name at least one task id")
    if len(items) > MAX_TASK_IDS:
        raise ValueError(f"at most {MAX_TASK_IDS} task ids per request, got {len(items)}")
    return [_parse_id(position, item) for position, item in enumerate(items, start=1)]


def _parse_id(position: int, item: Any) -> int:
    if isinstance(item, int) and not isinstance(item, bool):
        if item < 0:
            raise ValueError(f"task id #{position} is negative: {item}")
        return item
    text = item.strip() if isinstance(item, str) else None
    if text is None or not text.isascii() or not text.isdigit():
        what = "empty" if text == "" else "not a non-negative integer"
        raise ValueError(f"task id #{position} is {what}: {item!r}")
    return int(text)


#: ``task_ids`` as both protocols send it.
TaskIds = Annotated[
    list[Annotated[int, Field(ge=0)]],
    BeforeValidator(_parse_ids),
    Field(min_length=1, max_length=MAX_TASK_IDS),
]


def _key(task_id: int) -> str:
    return f"{SCAN_TYPE}:{task_id}"


class Scan(Module):
    """Start and stop scans by id (the legacy ``SCAN_MODULE``)."""

    name = "SCAN_MODULE"

    @property
    def manager(self) -> TaskManager:
        manager: TaskManager | None = self.context.tasks
        if manager is None:
            raise Unavailable("this daemon runs no task manager; SCAN_MODULE needs one")
        return manager

    def _bounded(self, task_ids: list[int]) -> list[int]:
        """The distinct ids, in order, once their count is checked against the config's bound."""
        bound = self.manager.config.scan_max_task_ids
        if len(task_ids) > bound:
            raise ParamsInvalid(
                f"task_ids: at most {bound} ids per request ([tasks] scan_max_task_ids), got "
                f"{len(task_ids)}; "
                "nothing was started or stopped",
                details={"field": "task_ids", "limit": bound, "got": len(task_ids)},
            )
        return list(dict.fromkeys(task_ids))

    @action
    async def start(self, task_ids: TaskIds, *, caller: Identity) -> str:
        """Start a scan per id; ids already scanning are skipped. All start, or none (a cap refuses the whole)."""
        starts = [({"task_id": task_id}, _key(task_id)) for task_id in self._bounded(task_ids)]
        await self.manager.start_many(SCAN_TYPE, starts, caller)
        return "start ok"

    @action(dangerous=True)
    async def stop(self, task_ids: TaskIds, *, caller: Identity) -> str:
        """Stop the scan of each id; ids with no active scan are skipped."""
        for task_id in self._bounded(task_ids):
            for record in self.manager.list_runs(key=_key(task_id)):
                if record.state in ACTIVE:
                    await self.manager.stop(record.id, caller)
        return "stop ok"
