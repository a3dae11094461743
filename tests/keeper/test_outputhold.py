"""The daemon's second read end of run output pipes: a writer keeps a reader when the first one dies."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from pymgr.keeper.outputhold import OutputHolders, open_pipe


@pytest.fixture
def pipe() -> Iterator[tuple[int, int, int]]:
    """(read end, write end, inode) of a real pipe; the write end is non-blocking."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(write_end, False)
    yield read_end, write_end, os.fstat(read_end).st_ino
    for fd in (read_end, write_end):
        try:
            os.close(fd)
        except OSError:
            pass  # closed by the test


def test_a_held_pipe_keeps_its_writer_alive_after_the_first_reader_closes(pipe: tuple[int, int, int]) -> None:
    read_end, write_end, inode = pipe
    holders = OutputHolders(limit=10)
    holders.hold(1, os.getpid(), [read_end, inode])  # as the daemon does, with the keeper's pid
    assert len(holders) == 1
    os.close(read_end)  # the keeper dies
    assert os.write(write_end, b"still here\n") == 11  # no EPIPE: the holder is a reader
    where = holders.where(1)
    assert where is not None and where["pid"] == os.getpid() and where["inode"] == inode
    taken = open_pipe(where["pid"], where["fd"], where["inode"])  # as the next keeper does
    assert taken is not None
    assert os.read(taken, 100) == b"still here\n"  # the same pipe: nothing written meanwhile is lost
    os.close(taken)
    holders.release(1)
    with pytest.raises(BrokenPipeError):  # the proof it was the holder: without any reader, EPIPE
        os.write(write_end, b"x")


def test_a_reused_descriptor_number_is_never_taken_for_the_pipe(pipe: tuple[int, int, int]) -> None:
    read_end, _, inode = pipe
    holders = OutputHolders(limit=10)
    holders.hold(1, os.getpid(), [read_end, inode + 1])  # the inode differs: another pipe by now
    with open(__file__, "rb") as other:  # a descriptor that is no pipe at all
        holders.hold(2, os.getpid(), [other.fileno(), inode])
    holders.hold(3, 2**22 + 7, [read_end, inode])  # no such process
    holders.hold(4, os.getpid(), [2**20, inode])  # no such descriptor
    assert len(holders) == 0 and holders.where(1) is None


def test_a_named_fifo_with_the_same_inode_is_never_opened(tmp_path: object) -> None:
    from pathlib import Path

    fifo = Path(str(tmp_path)) / "fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a FIFO, but not a pipe: another filesystem's inode
    try:
        holders = OutputHolders(limit=10)
        holders.hold(1, os.getpid(), [fd, os.fstat(fd).st_ino])
        assert len(holders) == 0
    finally:
        os.close(fd)


def test_malformed_reports_and_missing_keeper_pid_hold_nothing(
    pipe: tuple[int, int, int], caplog: pytest.LogCaptureFixture
) -> None:
    read_end, _, inode = pipe
    holders = OutputHolders(limit=10)
    holders.hold(1, None, [read_end, inode])  # no hello yet
    holders.hold(2, os.getpid(), None)  # a run without a pipe
    with caplog.at_level(logging.WARNING, logger="pymgr.tasks"):
        holders.hold(3, os.getpid(), ["x", inode])
    assert len(holders) == 0 and "malformed output pipe" in caplog.text


def test_the_limit_holds_and_is_logged_once(
    pipe: tuple[int, int, int], caplog: pytest.LogCaptureFixture
) -> None:
    read_end, _, inode = pipe
    holders = OutputHolders(limit=1)
    with caplog.at_level(logging.WARNING, logger="pymgr.tasks"):
        for task_id in range(1, 4):
            holders.hold(task_id, os.getpid(), [read_end, inode])
    assert len(holders) == 1 and holders.where(1) is not None and holders.where(2) is None
    assert caplog.text.count("not holding more runs' output pipes") == 1
    holders.close()
    assert len(holders) == 0


def test_holding_twice_and_releasing_twice_change_nothing(pipe: tuple[int, int, int]) -> None:
    read_end, _, inode = pipe
    holders = OutputHolders(limit=10)
    holders.hold(1, os.getpid(), [read_end, inode])
    first = holders.where(1)
    holders.hold(1, os.getpid(), [read_end, inode])  # every "live" report repeats it
    assert holders.where(1) == first and len(holders) == 1
    holders.release(1)
    holders.release(1)
    assert len(holders) == 0


def test_the_default_limit_is_half_the_descriptor_limit() -> None:
    import resource

    assert OutputHolders().limit == resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2


def test_a_new_keeper_that_cannot_reopen_the_log_still_drains_the_pipe(pipe: tuple[int, int, int]) -> None:
    from pymgr.keeper.adoption import take_output
    from pymgr.keeper.proctree import ProcRef
    from pymgr.keeper.runs import Run
    from pymgr.protocol.keeper import HeldPipe, LogSettings

    read_end, write_end, inode = pipe
    holders = OutputHolders(limit=10)
    holders.hold(1, os.getpid(), [read_end, inode])
    run = Run(1, ProcRef(os.getpid(), 0), "t" * 32, "boot", 0.0)
    where = holders.where(1)
    assert where is not None
    take_output(
        run, HeldPipe(**where), LogSettings(dir="/nonexistent/dir", max_bytes=0, keep=1)
    )  # bad max_bytes
    assert run.output_fd is not None and run.log is None
    assert run.log_error is not None and run.log_error.startswith("output dropped: cannot reopen the log")
    os.write(write_end, b"x" * 1000)
    assert run.drain() == (False, None)  # read and dropped: the run never blocks on a full pipe
    run.close_output()
    holders.close()
