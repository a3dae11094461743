"""pymgr.errors: what an error carries besides its message."""

from __future__ import annotations

import pytest

from pymgr.errors import RateLimited


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        ({"retry_after_s": 3}, 3),
        ({"max_concurrent": 1, "max_queued": 0}, None),  # a command's queue is full: no time to give
        ({"retry_after_s": True}, None),
        ({"retry_after_s": "3"}, None),
        (None, None),
    ],
)
def test_retry_after_s_is_the_whole_seconds_the_daemon_gave(
    details: dict | None, expected: int | None
) -> None:
    assert RateLimited("too many", details=details).retry_after_s == expected
