"""The typed client, end to end against the demo: start a scan, follow it, wait for its end.

Run it against `make run` (the socket is found in ./var):

    python examples/client_typed.py

It is also the client's type test: `make test` checks it under `mypy --strict`,
and each ``assert_type`` fails the check if a result ever becomes ``Any``
again (tests/test_client_typed_example.py runs it against a real daemon).
"""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime
from typing import assert_type

from pymgr.client import (
    AsyncClient,
    Client,
    Event,
    Health,
    JsonValue,
    ModuleInfo,
    Retry,
    TaskCounts,
    TaskRecord,
    TaskState,
    TaskTypeInfo,
    WaitTimeout,
)


def blocking(socket: str | None) -> TaskRecord:
    # Retries are opt-in: a daemon restarting or rate limiting is waited for, within bounds.
    with Client(socket=socket, retry=Retry(attempts=5, backoff_s=0.2, max_backoff_s=2.0)) as client:
        health = assert_type(client.health(), Health)
        print(f"pymgr {health.version}, up {health.uptime_s:.0f} s")
        modules = assert_type(client.modules(allowed=True), list[ModuleInfo])
        callable_actions = [f"{m.name}.{a.name}" for m in modules for a in m.actions if a.allowed]
        print("you may call:", ", ".join(callable_actions))
        assert_type(client.task_types(), list[TaskTypeInfo])
        counts = assert_type(client.task_counts(), TaskCounts)
        assert_type(counts.by_state(), dict[TaskState, int])
        print(f"{counts.total} runs kept, {counts.running} running")
        assert_type(client.call("demo", "echo", word="hi"), JsonValue)

        run = assert_type(
            client.start_task("scan", {"task_id": 1, "duration": 1}, key="example:1"), TaskRecord
        )
        assert_type(run.state, TaskState)
        assert_type(run.created_at, datetime)
        for event in client.events(task=run.id):
            assert_type(event, Event)
            record = event.record()
            if record is not None:
                print(f"task {record.id} {record.state} {record.progress or 0:g}%")
                if record.is_final:
                    break
        try:
            final = assert_type(client.wait(run.id, timeout_s=60), TaskRecord)
        except WaitTimeout as exc:
            sys.exit(f"gave up: {exc.message} (last state {exc.last_state})")
        output = assert_type(client.logs(run.id, progress=False), bytes)
        print(output.decode(errors="replace"), end="")
        return final


async def asynchronous(socket: str | None, task_id: int) -> TaskRecord:
    async with AsyncClient(socket=socket) as client:
        assert_type(await client.tasks(limit=5), list[TaskRecord])
        assert_type(await client.task_counts(), TaskCounts)
        return assert_type(await client.wait(task_id, timeout_s=60), TaskRecord)


def main() -> None:
    socket = sys.argv[1] if len(sys.argv) > 1 else None
    final = blocking(socket)
    again = asyncio.run(asynchronous(socket, final.id))
    print(
        f"task {final.id} ended {final.state} at {final.ended_at}; the async client agrees: {again == final}"
    )


if __name__ == "__main__":
    main()
