"""AcceptErrorLog: failed accepts are reported at a bounded rate, with their count."""

from __future__ import annotations

import errno
import logging

import pytest

from pymgr.transport.acceptor import AcceptErrorLog


def test_one_line_per_interval_with_the_count_since_the_last(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    errors = AcceptErrorLog("tcp", interval_s=10.0, clock=lambda: now[0])
    emfile = OSError(errno.EMFILE, "Too many open files")
    with caplog.at_level(logging.ERROR, logger="pymgr.accept"):
        assert errors.note(emfile, paused=True)
        for _ in range(500):
            now[0] += 0.01
            assert not errors.note(emfile, paused=True)
        now[0] = 110.0  # exactly at the interval: reported again
        assert errors.note(emfile, paused=True)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and errors.total == 502
    assert lines[0].startswith(
        "accept on tcp failed 1 time(s) since the last report (last: EMFILE, Too many open files)"
    )
    assert lines[1].startswith("accept on tcp failed 501 time(s) since the last report")
