"""Open streams asked again at a policy swap: a followed log of a type the new policy refuses ends, others stay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pymgr.auth.policy import Policy
from pymgr.transport.http.messages import Request
from pymgr.transport.http.streamgrants import StreamGrants
from tests.auth.test_policy import CI, policy


async def endless() -> AsyncIterator[bytes]:
    while True:
        await asyncio.sleep(0.01)
        yield b"log line\n"


async def follow(grants: StreamGrants, task_id: int) -> None:
    request = Request("GET", f"/v1/tasks/{task_id}/logs", b"", b"follow=true", [], b"", CI)
    async for _ in grants.hold(endless(), request, CI, "logs", task_id):
        pass


async def test_a_swap_ends_only_the_streams_the_new_policy_refuses() -> None:
    both = policy({"subjects": ["key:ci"], "actions": ["tasks.logs:scan", "tasks.logs:backup"]})
    current: list[Policy] = [both]
    grants = StreamGrants(lambda: current[0], both._registry)
    scan, backup = (
        asyncio.create_task(follow(grants, 1)),
        asyncio.create_task(follow(grants, 2)),
    )  # types 1, 2
    await asyncio.sleep(0.05)
    assert grants.open_count == 2
    grants.recheck()  # the same rules: nothing ends
    await asyncio.sleep(0.05)
    assert not scan.done() and not backup.done()
    current[0] = policy({"subjects": ["key:ci"], "actions": ["tasks.logs:backup"]})
    grants.recheck()
    await asyncio.sleep(0.05)
    assert scan.cancelled() and not backup.done() and grants.open_count == 1
    backup.cancel()
    await asyncio.gather(backup, return_exceptions=True)
    assert grants.open_count == 0
