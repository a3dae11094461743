"""``SCAN_MODULE``: the 2014 design's scan module, on top of background tasks.

Its legacy clients send ``module:SCAN_MODULE``, ``action:start`` or
``action:stop`` and ``task_ids:1,2``; each id maps to one run of the task
type ``scan`` with key ``scan:<id>`` and params ``{"task_id": <id>}``.

Rules:
- ``task_ids`` is a list of ints, or a string of comma-separated ints (the
  legacy protocol only sends strings). Items are stripped; an empty,
  negative or non-integer item is a ParamsInvalid naming that item (legacy
  err_code 4). At most ``MAX_TASK_IDS`` ids per request.
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
from pymgr.errors import Unavailable
from pymgr.tasks.manager import TaskManager
from pymgr.tasks.states import ACTIVE

#: Most ids in one request: a scan is a long-running process per id, and a
#: request for more than this is a client bug, not a workload.
MAX_TASK_IDS = 100

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
TaskIds = Annotated[list[int], BeforeValidator(_parse_ids), Field(min_length=1, max_length=MAX_TASK_IDS)]


def _key(task_id: int) -> str:
    return f"{SCAN_TYPE}:{task_id}"


class Scan(Module):
    """Start and stop scans by id (the legacy ``SCAN_MODULE``)."""

    name = "SCAN_MODULE"

    @property
    def manager(self) -> TaskManager:
        manager = self.context.tasks
        if manager is None:
            raise Unavailable("this daemon runs no task manager; SCAN_MODULE needs one")
        return manager  # type: ignore[no-any-return]

    @action
    async def start(self, task_ids: TaskIds, *, caller: Identity) -> str:
        """Start a scan per id; ids already scanning are skipped."""
        for task_id in dict.fromkeys(task_ids):
            await self.manager.start(SCAN_TYPE, {"task_id": task_id}, _key(task_id), caller)
        return "start ok"

    @action
    async def stop(self, task_ids: TaskIds, *, caller: Identity) -> str:
        """Stop the scan of each id; ids with no active scan are skipped."""
        for task_id in dict.fromkeys(task_ids):
            for record in self.manager.list(key=_key(task_id)):
                if record.state in ACTIVE:
                    await self.manager.stop(record.id, caller)
        return "stop ok"
