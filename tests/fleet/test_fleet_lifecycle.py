"""A host's life in the fleet, for real: its clean stop, an entry it cannot take up, and being forgotten.

Real daemons on a real Redis, with the short lease of the dead-host tests.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pymgr.fleet import jobs
from pymgr.fleet.client import FleetClient
from pymgr.fleet.keyspace import DEAD, GROUP, HOSTS, REAPER, SILENT, job_key
from tests.conftest import Daemon, wait_for
from tests.fleet.conftest import KEY_ID, host_config
from tests.fleet.test_fleet_dead_hosts import FAST, LEASE_S, PAST_LEASE_S
from tests.fleet.test_fleet_hosts import _queue, runs_of


def _pending(client: redis.Redis, stream: str) -> int:
    return int(client.xpending(stream, GROUP)["pending"])


def test_a_clean_stop_reports_the_end_of_its_runs_and_no_host_runs_them_again(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str
) -> None:
    a = start_host("a", ("scanner",), fleet=FAST)
    tagged = fleet.submit("scan", {"task_id": 1, "duration": 60}, tag="scanner")
    pinned = fleet.submit("scan", {"task_id": 2, "duration": 60}, host="a")
    wait_for(lambda: fleet.show(tagged).state == fleet.show(pinned).state == "running")
    b = start_host("b", ("scanner",), fleet=FAST)  # would claim the tagged job, were it left pending
    stopping = time.monotonic()
    assert a.stop() == 0
    assert time.monotonic() - stopping < 10
    with redis.Redis.from_url(redis_url) as client:  # ended and acknowledged before the daemon exited
        assert _pending(client, "fleet:tag:scanner") == _pending(client, "fleet:host:a") == 0
    for job_id in (tagged, pinned):
        info = fleet.show(job_id)
        assert (info.state, info.received_by, info.fields["task_state"]) == ("stopped", "a", "stopped"), info
        assert info.fields["cancel_source"] == "shutdown" and info.fields["signal"] == "SIGTERM", info
        assert info.error == f"host a shut down and stopped run {info.task_id}"
    assert "fleet job" in a.log() and "-> stopped" in a.log()
    time.sleep(PAST_LEASE_S)  # a's heartbeat has run out: b would have claimed a pending entry by now
    assert runs_of(b, tagged) == [] and fleet.show(tagged).received_by == "a"
    # Back, a starts neither again: the pinned job stays as its stop left it.
    back = start_host("a", ("scanner",), fleet=FAST)
    echo = fleet.submit("echo", {"word": "back"}, host="a")
    assert fleet.wait(echo, timeout_s=20).state == "succeeded"
    assert [run["state"] for run in runs_of(back, pinned)] == ["stopped"]
    assert fleet.show(pinned).state == "stopped"


def test_a_host_leaving_its_runs_to_the_keeper_reports_their_end_when_it_starts_again(
    start_daemon: Callable[..., Daemon], fleet: FleetClient, redis_url: str, keys: tuple[Path, Path]
) -> None:
    config = host_config(redis_url, keys[1], "a").replace("[tasks]\n", '[tasks]\non_shutdown = "leave"\n')
    host = start_daemon(config, name="a")
    job_id = fleet.submit("scan", {"task_id": 1, "duration": 3}, host="a")
    wait_for(lambda: fleet.show(job_id).state == "running")
    assert host.stop() == 0
    with redis.Redis.from_url(redis_url) as client:  # the run goes on: the job is still the host's
        assert fleet.show(job_id).state == "running" and _pending(client, "fleet:host:a") == 1
    start_daemon(config, name="a")
    info = fleet.wait(job_id, timeout_s=30)
    assert (info.state, info.exit_code, info.received_by) == ("succeeded", 0, "a")


def test_an_entry_that_keeps_failing_holds_back_no_later_one_and_is_dead_lettered(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str
) -> None:
    # A job its host must refuse (signed by a key it does not know), whose hash is no hash: marking it
    # refused answers WRONGTYPE, every time.
    bad = jobs.Job("bad", "task", "echo", {"word": "x"}, jobs.Target("host", "a"), time.time(), KEY_ID)
    with redis.Redis.from_url(redis_url) as client:
        client.set(job_key("bad"), "not a hash")
    _queue(redis_url, bad, Ed25519PrivateKey.generate())
    later = fleet.submit("echo", {"word": "later"}, host="a")
    host = start_host("a", fleet=f"{FAST}\nmax_deliveries = 3")
    assert fleet.wait(later, timeout_s=20).state == "succeeded"  # read after the bad one, not held back
    with redis.Redis.from_url(redis_url) as client:
        [(_, dead)] = wait_for(lambda: client.xrange(DEAD))
        assert _pending(client, "fleet:host:a") == 0
        assert client.get(job_key("bad")) == b"not a hash"
    assert dead[b"stream"] == b"fleet:host:a" and dead[b"host"] == b"a"
    assert (
        dead[b"error"].startswith(b"entry ")
        and b"failed 3 times and is given up: ResponseError: WRONGTYPE" in dead[b"error"]
    )
    assert host.log().count("failed (try ") == 2
    assert runs_of(host, "bad") == []


def test_a_host_silent_past_forget_host_after_s_with_nothing_pending_is_forgotten(
    start_host: Callable[..., Daemon],
    start_hosts: Callable[..., list[Daemon]],
    fleet: FleetClient,
    redis_url: str,
) -> None:
    settings = f"{FAST}\nforget_host_after_s = 1"
    b = start_host("b", fleet=settings)
    with redis.Redis.from_url(redis_url) as client:
        wait_for(lambda: client.get(REAPER) == b"b")
        a, c = start_hosts(("a", ()), ("c", ()), fleet=settings)
        pinned = fleet.submit("scan", {"task_id": 1, "duration": 60}, host="a")
        wait_for(lambda: fleet.show(pinned).state == "running")
        wait_for(lambda: {h.id for h in fleet.hosts()} == {"a", "b", "c"})
        a.stop(signal.SIGKILL)
        c.stop(signal.SIGKILL)
        # Queued for c after it died, in no form the reaper can mark lost: c keeps something queued.
        client.xadd("fleet:host:c", {"job": "{}", "sig": "x"})
        assert fleet.wait(pinned, timeout_s=20).state == "lost"  # marked lost first, then forgotten
        wait_for(lambda: [h.id for h in fleet.hosts()] == ["b", "c"], timeout_s=20)
        assert client.zscore(SILENT, "a") is None and client.zscore(SILENT, "c") is not None
        time.sleep(LEASE_S / 2)  # rounds more
        assert client.smembers(HOSTS) == {b"b", b"c"}  # c is silent too, but not idle
    assert "host a was silent for" in b.log() and "forgotten" in b.log()
    # Back, a host is listed again at its first heartbeat.
    start_host("a", fleet=settings)
    wait_for(lambda: [h.id for h in fleet.hosts()] == ["a", "b", "c"])
