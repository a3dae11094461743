"""An action job is called at most once on a host, across daemon restarts (``fleet/replay.py``).

Real daemons on a real Redis: a job is called, the daemon is stopped (cleanly, or
killed in the middle of the call) and started again on the same state directory,
and the job's entry is replayed (the same signed fields added to the stream again)
well within ``max_age_s``. The audit, which has a line for every call that ran,
shows the job called once at most.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import redis

from pymgr.fleet.client import FleetClient
from tests.conftest import Daemon, wait_for

STREAM = "fleet:host:a"
#: Seconds the slow action sleeps: long enough to stop the daemon in the middle of it.
SLEEP_S = 30


def _replay(redis_url: str) -> None:
    """Add the stream's first entry again, exactly as it was signed; wait until the host acknowledged all."""
    with redis.Redis.from_url(redis_url) as client:
        [(_, fields)] = client.xrange(STREAM, count=1)
        client.xadd(STREAM, fields)
        wait_for(lambda: client.xpending(STREAM, "pymgr")["pending"] == 0 and client.xlen(STREAM) == 2)


def _calls(host: Daemon, operation: str) -> list[str]:
    audit = (host.dir / "state" / "audit.log").read_text()
    return [line for line in audit.splitlines() if f'"operation":"{operation}"' in line]


def test_a_job_called_before_a_clean_restart_is_not_called_when_replayed(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str
) -> None:
    host = start_host("a", allow='"demo.echo"')
    job_id = fleet.submit("demo.echo", {"greeting": "once"}, host="a", kind="action")
    assert fleet.wait(job_id, timeout_s=30).state == "succeeded"
    assert host.stop() == 0
    host = start_host("a", allow='"demo.echo"')
    _replay(redis_url)
    wait_for(lambda: f"action job {job_id} was called here already" in host.log())
    assert host.stop() == 0
    assert len(_calls(host, "demo.echo")) == 1
    info = fleet.show(job_id)
    assert (info.state, info.result["greeting"]) == ("succeeded", "once")  # the hash is left as it was


def test_a_call_cut_short_by_kill_9_is_not_made_again_and_its_job_is_lost(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str
) -> None:
    host = start_host("a", allow='"demo.sleep"')
    job_id = fleet.submit("demo.sleep", {"seconds": SLEEP_S}, host="a", kind="action")
    wait_for(lambda: fleet.show(job_id).state == "running")  # called: the hash says so before the call
    host.stop(signal.SIGKILL)
    host = start_host("a", allow='"demo.sleep"')
    # The entry is still pending (never acknowledged): the restarted host re-reads it, finds it called.
    info = fleet.wait(job_id, timeout_s=30)
    assert info.state == "lost"
    assert "not called again" in info.error
    assert info.received_by == "a"
    _replay(redis_url)
    wait_for(lambda: host.log().count(f"action job {job_id} was called here already") == 2)
    assert host.stop() == 0  # a call running now would be cancelled and audited
    assert _calls(host, "demo.sleep") == []  # the killed call wrote no line; no call after the restart
    assert fleet.show(job_id).state == "lost"


def test_a_call_cut_short_by_a_clean_stop_is_not_made_again(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str
) -> None:
    host = start_host("a", allow='"demo.sleep"')
    job_id = fleet.submit("demo.sleep", {"seconds": SLEEP_S}, host="a", kind="action")
    wait_for(lambda: fleet.show(job_id).state == "running")
    assert host.stop() == 0
    [call] = _calls(host, "demo.sleep")
    assert '"outcome":"cancelled"' in call
    # The stop itself says so: lost (its outcome is unknown), acknowledged, not left for the next start.
    info = fleet.show(job_id)
    assert info.state == "lost" and "not called again" in (info.error or "")
    with redis.Redis.from_url(redis_url) as client:
        assert client.xpending(STREAM, "pymgr")["pending"] == 0
    host = start_host("a", allow='"demo.sleep"')
    _replay(redis_url)
    wait_for(lambda: host.log().count(f"action job {job_id} was called here already") == 1)
    assert host.stop() == 0
    assert len(_calls(host, "demo.sleep")) == 1
    assert fleet.show(job_id).state == "lost"


def test_a_full_record_refuses_a_new_action_job_and_says_which_setting_to_raise(
    start_host: Callable[..., Daemon], fleet: FleetClient
) -> None:
    start_host("a", allow='"demo.echo"', fleet="lease_s = 3\nreplay_max_entries = 1")
    first = fleet.submit("demo.echo", {"n": 1}, host="a", kind="action")
    assert fleet.wait(first, timeout_s=30).state == "succeeded"
    second = fleet.submit("demo.echo", {"n": 2}, host="a", kind="action")
    info = fleet.wait(second, timeout_s=30)
    assert info.state == "refused"
    assert "raise [fleet] replay_max_entries" in info.error
