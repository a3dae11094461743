"""A run's output through the keeper: never blocking, capped and rotated, progress lines, following."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from taskhelpers import CALLER, MakeManager, py, wait_end, wait_running

from pymgr.config import TaskTypeConfig
from pymgr.errors import Unavailable
from pymgr.tasks.logreader import LogSpan
from pymgr.tasks.manager import TaskManager
from pymgr.tasks.states import TaskState

#: Prints progress, then more output, then exits.
PROGRESS = py(
    "import time\n"
    "for p in (10, 50, 90):\n"
    "    print('PYMGR_PROGRESS %d step %d' % (p, p), flush=True)\n"
    "    time.sleep(0.15)\n"
    "print('done', flush=True)\n"
)


def span(manager: TaskManager, task_id: int) -> LogSpan:
    """The log's span; a log rotating every few microseconds may ask the reader to retry (503), never lie."""
    for _ in range(100):
        try:
            return manager.logs.span(task_id)
        except Unavailable:
            time.sleep(0.001)
    raise AssertionError("the log kept rotating under 100 reads")


async def test_a_task_spamming_output_never_blocks_and_its_log_is_capped(make_manager: MakeManager) -> None:
    yes = shutil.which("yes") or "/usr/bin/yes"
    spec = {"argv": [yes, "spam spam spam spam"], "log_max_bytes": 64 * 1024, "log_keep": 2}
    manager = make_manager(types={"spam": TaskTypeConfig.model_validate(spec)})
    record = await wait_running(manager, (await manager.start("spam", {}, None, CALLER)).id)
    await asyncio.sleep(0.3)
    first = span(manager, record.id)
    await asyncio.sleep(0.7)
    second = span(manager, record.id)
    # Still writing fast (a blocked writer adds nothing): tens of MB/s on any machine this runs on.
    assert second.end - first.end > 5 * 1024 * 1024, (first, second)
    assert second.start > 0  # the oldest bytes were rotated away
    await manager.stop(record.id, CALLER)
    ended = await wait_end(manager, record.id)
    assert (ended.state, ended.signal) == (TaskState.STOPPED, "SIGTERM")
    log_dir = Path(record.log_path).parent
    sizes = {p.name: p.stat().st_size for p in log_dir.glob(f"{record.id}.log*")}
    # log_keep rotated files plus the current one, each capped; the current file is created at its
    # first byte, so a stop that lands right after a rotation leaves only the rotated ones.
    assert 2 <= len(sizes) <= 3 and max(sizes.values()) <= 64 * 1024, sizes


async def test_progress_lines_reach_the_record_and_the_events(make_manager: MakeManager) -> None:
    manager = make_manager(types={"steps": TaskTypeConfig(argv=PROGRESS)})
    with manager.events.subscribe() as events:
        record = await manager.start("steps", {}, None, CALLER)
        seen: list[tuple[object, object]] = []
        states: list[str] = []
        async with asyncio.timeout(15):
            while "succeeded" not in states:
                event = await events.get(5)
                assert event is not None
                if event.kind == "progress":
                    seen.append((event.data["progress"], event.data["progress_message"]))
                    assert (
                        manager.get(record.id).progress == event.data["progress"]
                    )  # the record has it at once
                elif event.kind == "state":
                    states.append(event.data["state"])
    assert states == ["queued", "running", "succeeded"]
    assert seen[-1] == (90.0, "step 90") and len(seen) >= 2  # coalesced, never out of order
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)
    final = manager.get(record.id)
    assert (final.progress, final.progress_message) == (90.0, "step 90")
    assert Path(final.log_path).read_text().splitlines() == [
        "PYMGR_PROGRESS 10 step 10",
        "PYMGR_PROGRESS 50 step 50",
        "PYMGR_PROGRESS 90 step 90",
        "done",
    ]


async def test_follow_yields_output_as_it_comes_until_the_run_ends(make_manager: MakeManager) -> None:
    manager = make_manager(types={"steps": TaskTypeConfig(argv=PROGRESS)})
    record = await manager.start("steps", {}, None, CALLER)
    chunks = []
    async with asyncio.timeout(15):
        async for chunk in manager.logs.follow(
            record.id, 0, running=lambda: manager.running(record.id), poll_s=0.02
        ):
            chunks.append(chunk)
    assert len(chunks) >= 2  # it came in pieces, while the run went on
    assert b"".join(chunks).endswith(b"done\n")
    assert manager.get(record.id).state is TaskState.SUCCEEDED


async def test_output_of_a_run_ending_while_nobody_reads_is_complete(make_manager: MakeManager) -> None:
    many = py("import sys; sys.stdout.write('x' * 1_000_000); sys.stdout.flush()")
    manager = make_manager(types={"many": TaskTypeConfig(argv=many)})
    ended = await wait_end(manager, (await manager.start("many", {}, None, CALLER)).id)
    assert ended.state is TaskState.SUCCEEDED
    assert Path(ended.log_path).stat().st_size == 1_000_000  # drained before the exit was reported
