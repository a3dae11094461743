"""Logs without the progress lines: the filter, the action, HTTP, the client and the CLI."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from survivalhelpers import states, wait_until

from pymgr.client import Client
from pymgr.keeper.progress import MAX_LINE_BYTES, ProgressLineFilter
from tests.conftest import PYMGR, Daemon, unix_http

LOG = b"a\nPYMGR_PROGRESS 10 x\nb PYMGR_PROGRESS 5\nPYMGR_PROGRESS 500\nPYMGR_PROGRESS 20\r\nend\nPYMGR_PROG"
#: The same rule as the progress scanner: whole lines only, a percentage up to 100, at a line's start.
WITHOUT = b"a\nb PYMGR_PROGRESS 5\nPYMGR_PROGRESS 500\nend\nPYMGR_PROG"


@pytest.mark.parametrize("size", range(1, len(LOG) + 1))
def test_the_filter_drops_progress_lines_however_the_output_is_cut(size: int) -> None:
    lines = ProgressLineFilter()
    out = b"".join(lines.feed(LOG[i : i + size]) for i in range(0, len(LOG), size))
    assert out + lines.flush() == WITHOUT


def test_the_filter_passes_a_line_it_joined_midway_and_holds_no_more_than_a_progress_line() -> None:
    assert ProgressLineFilter(at_line_start=False).feed(b"GRESS 10\nPYMGR_PROGRESS 1\nx") == b"GRESS 10\nx"
    lines = ProgressLineFilter()
    at_limit = b"PYMGR_PROGRESS 1 " + b"m" * (MAX_LINE_BYTES - 17)
    assert lines.feed(at_limit) == b"" and lines.held == MAX_LINE_BYTES
    assert lines.feed(b"m") == at_limit + b"m"  # one byte more: output only, as the scanner has it
    assert lines.feed(b"\nPYMGR_PROGRESS 2\n") == b"\n"


@pytest.fixture
def ended_scan(daemon: Daemon) -> Iterator[tuple[Client, int]]:
    with Client(socket=daemon.socket) as client:
        task = client.start_task("scan", {"task_id": 4, "duration": 0.3})
        wait_until(lambda: states(client)[task.id]["state"] == "succeeded", "the end")
        yield client, task.id


def test_logs_without_progress_everywhere_and_with_it_by_default(
    daemon: Daemon, ended_scan: tuple[Client, int]
) -> None:
    client, task_id = ended_scan
    full = client.logs(task_id)
    assert b"\nPYMGR_PROGRESS 100 scan 4\n" in full
    without = b"".join(
        line for line in full.splitlines(keepends=True) if not line.startswith(b"PYMGR_PROGRESS")
    )
    assert b"scan 4: 100%\n" in without
    with unix_http(daemon) as http:
        path = f"/v1/tasks/{task_id}/logs"
        assert http.get(path, params={"progress": "false"}).content == without
        assert http.get(path, params={"progress": "false", "follow": "true"}).content == without
        assert http.get(path, params={"progress": "true"}).content == full
        reply = http.get(path, params={"progress": "maybe"})
        assert (reply.status_code, reply.json()["error"]["message"]) == (
            400,
            "progress: must be true or false, not 'maybe'",
        )
    assert client.logs(task_id, progress=False) == without
    assert b"".join(client.follow_logs(task_id, progress=False)) == without
    read = client.call("tasks", "logs", id=task_id, progress=False)
    assert (read["data"].encode(), read["next_offset"]) == (without, len(full))
    cli = subprocess.run(
        [str(PYMGR), "--socket", str(daemon.socket), "tasks", "logs", "--no-progress", str(task_id)],
        capture_output=True,
        timeout=30,
    )
    assert (cli.returncode, cli.stdout) == (0, without)
    for flags in ([], ["--progress"]):  # by default as the run wrote it, as `pymgr fleet logs` prints it
        argv = [str(PYMGR), "--socket", str(daemon.socket), "tasks", "logs", *flags, str(task_id)]
        cli = subprocess.run(argv, capture_output=True, timeout=30)
        assert (cli.returncode, cli.stdout) == (0, full)


def test_the_action_reads_on_from_the_start_of_a_line_it_could_not_judge(
    ended_scan: tuple[Client, int],
) -> None:
    client, task_id = ended_scan
    full = client.logs(task_id)
    cut = full.index(b"PYMGR_PROGRESS") + 5  # the read ends inside a progress line
    first = client.call("tasks", "logs", id=task_id, limit=cut, progress=False)
    assert first["next_offset"] == cut - 5 and b"PYMGR" not in first["data"].encode()
    rest = client.call(
        "tasks", "logs", id=task_id, offset=first["next_offset"], limit=len(full), progress=False
    )
    assert b"PYMGR_PROGRESS" not in rest["data"].encode() and rest["next_offset"] == len(full)
    middle = client.call("tasks", "logs", id=task_id, offset=cut, limit=len(full), progress=False)
    assert middle["data"].startswith(full[cut : full.index(b"\n", cut) + 1].decode())  # joined midway: kept
