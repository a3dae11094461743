"""Opt-in retries (client/retry.py): the rule alone, then counted on the stub, then against a real daemon."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pymgr import errors
from pymgr.client import AsyncClient, BadReply, Client, ConnectionFailed, Health, Retry
from pymgr.client.retry import retryable
from tests.conftest import BASE_CONFIG, Daemon
from tests.test_client import StubServer, stub, stub_server  # noqa: F401  (the stub's fixtures)

NOT_SENT = ConnectionFailed("refused", request_sent=False)
MAY_HAVE_ARRIVED = ConnectionFailed("reset after sending", request_sent=True)


@pytest.mark.parametrize(
    ("error", "method", "expected"),
    [
        (errors.RateLimited("slow down"), "POST", True),
        (errors.Unavailable("shutting down"), "POST", True),
        (NOT_SENT, "POST", True),
        (MAY_HAVE_ARRIVED, "GET", True),
        (MAY_HAVE_ARRIVED, "POST", False),
        (errors.NotFound("no such task"), "GET", False),
        (errors.Forbidden("no"), "GET", False),
        (errors.Conflict("held"), "POST", False),
        (errors.NotRecorded("ran, not recorded"), "POST", False),
        (errors.ActionFailed("boom"), "POST", False),
        (BadReply("not pymgr"), "GET", False),
    ],
)
def test_what_is_retried(error: errors.PymgrError, method: str, expected: bool) -> None:
    assert retryable(error, method) is expected


def test_the_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    retry = Retry(attempts=10, backoff_s=0.2, max_backoff_s=1.0)
    for n, ceiling in enumerate([0.2, 0.4, 0.8, 1.0, 1.0]):
        delays = {retry.delay_s(n, NOT_SENT, "POST") for _ in range(50)}
        assert all(d is not None and ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered
    assert retry.max_total_wait_s == 9.0


def test_retry_after_is_honoured_and_capped() -> None:
    limited = errors.RateLimited("slow down", details={"retry_after_s": 2})
    assert Retry(max_backoff_s=5.0).delay_s(0, limited, "POST") == 2.0
    assert Retry(max_backoff_s=0.5).delay_s(0, limited, "POST") == 0.5


def test_the_last_attempt_and_the_rest_are_not_retried() -> None:
    retry = Retry(attempts=3)
    assert retry.delay_s(1, NOT_SENT, "GET") is not None
    assert retry.delay_s(2, NOT_SENT, "GET") is None
    assert Retry(attempts=1).delay_s(0, NOT_SENT, "GET") is None
    assert retry.delay_s(0, errors.NotFound("x"), "GET") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": 0}, r"^Retry attempts must be at least 1, not 0$"),
        ({"backoff_s": -1}, r"^Retry backoff_s must be 0 or more, not -1$"),
        (
            {"backoff_s": 2, "max_backoff_s": 1},
            r"^Retry max_backoff_s must be at least backoff_s \(2\), not 1$",
        ),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Retry(**kwargs)


# ---------------------------------------------------------------- counted on the stub

QUICK = Retry(attempts=3, backoff_s=0.01, max_backoff_s=0.05)


@pytest.mark.parametrize(
    ("code", "tries"),
    [("rate_limited", 3), ("unavailable", 3), ("not_found", 1), ("conflict", 1), ("internal", 1)],
)
def test_each_error_is_sent_as_often_as_the_rule_says(stub: StubServer, code: str, tries: int) -> None:  # noqa: F811
    with Client(socket=stub.socket, retry=QUICK) as client, pytest.raises(errors.PymgrError):
        client.call("errors", code)
    assert len(stub.app.requests) == tries


def test_without_retry_nothing_is_sent_twice(stub: StubServer) -> None:  # noqa: F811
    with Client(socket=stub.socket) as client, pytest.raises(errors.RateLimited):
        client.call("errors", "rate_limited")
    assert len(stub.app.requests) == 1


def test_a_post_that_may_have_arrived_is_not_sent_again(stub: StubServer) -> None:  # noqa: F811
    with Client(socket=stub.socket, timeout_s=0.2, retry=QUICK) as client, pytest.raises(ConnectionFailed):
        client.call("slow", "sleep")  # the reply is late: the action may have run
    assert len(stub.app.requests) == 1


# ---------------------------------------------------------------- a real daemon

RATE_LIMITED_CONFIG = BASE_CONFIG + "\n[limits]\nrate_per_s = 1\nrate_burst = 2\n"


def _calls(kind: str, socket: Path, retry: Retry | None, count: int) -> list[Any]:
    """``count`` quick calls of demo.echo through the sync or async client."""
    if kind == "sync":
        with Client(socket=socket, retry=retry) as client:
            return [client.call("demo", "echo", n=n) for n in range(count)]

    async def run() -> list[Any]:
        async with AsyncClient(socket=socket, retry=retry) as client:
            return [await client.call("demo", "echo", n=n) for n in range(count)]

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_rate_limited_call_waits_its_retry_after(start_daemon: Callable[..., Daemon], kind: str) -> None:
    daemon = start_daemon(RATE_LIMITED_CONFIG)
    with pytest.raises(errors.RateLimited) as info:
        _calls(kind, daemon.socket, None, 3)
    assert info.value.details == {"retry_after_s": 1}
    time.sleep(2.5)  # the bucket fills again
    started = time.monotonic()
    assert _calls(kind, daemon.socket, Retry(attempts=3, backoff_s=0.01, max_backoff_s=5), 3) == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
    ]
    assert time.monotonic() - started >= 0.9  # waited the daemon's Retry-After, not the 0.01 s backoff


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_daemon_that_starts_late_is_waited_for(
    start_daemon: Callable[..., Daemon], tmp_path: Path, kind: str
) -> None:
    socket = tmp_path / "late" / "pymgr.sock"  # where the daemon will listen: no file yet
    starter = threading.Timer(0.5, start_daemon, kwargs={"name": "late"})
    starter.start()
    try:
        retry = Retry(attempts=60, backoff_s=0.1, max_backoff_s=0.5)
        if kind == "sync":
            with Client(socket=socket, retry=retry) as client:
                health = client.health()
        else:

            async def run() -> Health:
                async with AsyncClient(socket=socket, retry=retry) as client:
                    return await client.health()

            health = asyncio.run(run())
    finally:
        starter.join()
    assert health.status == "ok"


def test_a_daemon_that_is_not_there_is_given_up_on_in_bounded_time(tmp_path: Path) -> None:
    retry = Retry(attempts=4, backoff_s=0.05, max_backoff_s=0.1)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match=r"^cannot reach pymgr: no socket at "):
        with Client(socket=tmp_path / "none.sock", retry=retry) as client:
            client.health()
    assert time.monotonic() - started < retry.max_total_wait_s + 1
