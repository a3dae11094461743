"""When a host says a job started and ended: ``running_at``, and an end reported as it happens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pymgr.fleet.client import FleetClient
from tests.conftest import Daemon
from tests.fleet.conftest import host_config

#: Far longer than a run of ``echo`` takes: a host that looked only every poll_s would report its end this late.
SLOW_POLL_S = 20.0


def test_a_short_run_is_reported_when_it_ends_not_at_the_next_look(
    start_daemon: Callable[..., Daemon], redis_url: str, keys: tuple[Path, Path], fleet: FleetClient
) -> None:
    config = host_config(redis_url, keys[1], "a").replace("poll_s = 0.05", f"poll_s = {SLOW_POLL_S}")
    assert f"poll_s = {SLOW_POLL_S}" in config
    start_daemon(config, name="a")
    job_id = fleet.submit("echo", {"word": "quick"}, host="a")
    info = fleet.wait(job_id, timeout_s=SLOW_POLL_S / 2)
    assert (info.state, info.exit_code) == ("succeeded", 0)
    received, running, ended = (float(info.fields[k]) for k in ("received_at", "running_at", "ended_at"))
    assert received <= running <= ended < running + SLOW_POLL_S / 2
    assert float(info.fields["submitted_at"]) <= received + 1  # one clock here; 1 s for the ms rounding
