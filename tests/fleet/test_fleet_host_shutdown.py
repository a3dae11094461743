"""A clean stop of a fleet host: what it holds is reported, left pending, or kept from other hosts.

Real Redis, real daemons; a proxy holds a host's write to put it at the moment of its stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import redis

from pymgr.fleet.client import FleetClient
from pymgr.fleet.keyspace import GROUP, job_key
from pymgr.fleet.runner import END_SCRIPT
from tests.conftest import Daemon, wait_for
from tests.fleet.conftest import host_config
from tests.fleet.holding_proxy import HoldingProxy
from tests.fleet.test_fleet_dead_hosts import FAST, PAST_LEASE_S
from tests.fleet.test_fleet_hosts import runs_of

#: A run that ignores SIGTERM: the host's stop waits its stop grace, then kills it.
DEAF = """
[tasks.types.deaf]
argv = ["/bin/sh", "-c", "trap '' TERM; sleep 30"]
stop_grace_s = {grace}
"""


def test_a_job_taken_as_its_host_stops_stays_pending_and_runs_at_the_next_start(
    start_daemon: Callable[..., Daemon],
    fleet: FleetClient,
    redis_url: str,
    tmp_path: Path,
    keys: tuple[Path, Path],
) -> None:
    proxy = HoldingProxy(tmp_path / "proxy.sock", Path(redis_url.removeprefix("unix://")))
    config = host_config(proxy.url, keys[1], "a", fleet=f"{FAST}\nreaper = false") + DEAF.format(grace=2)
    a = start_daemon(config, name="a")
    deaf = fleet.submit("deaf", {}, host="a")
    wait_for(lambda: fleet.show(deaf).state == "running")
    proxy.marker = b"received_by"  # the take script of the next job: read, its run not started
    job_id = fleet.submit("scan", {"task_id": 1, "duration": 0.2}, host="a")
    assert proxy.held.wait(10)
    a.proc.send_signal(15)
    time.sleep(0.5)  # the host is stopping: the deaf run waits out its stop grace
    proxy.marker = None
    proxy.release.set()
    assert a.proc.wait(timeout=30) == 0
    assert fleet.show(deaf).state == "stopped"
    info = fleet.show(job_id)
    assert info.state in ("queued", "received") and info.error is None, info.fields
    with redis.Redis.from_url(redis_url) as client:
        assert client.xpending("fleet:host:a", GROUP)["pending"] == 1
    proxy.close()
    start_daemon(host_config(redis_url, keys[1], "a", fleet=FAST), name="a")
    info = fleet.wait(job_id, timeout_s=30)
    assert (info.state, info.received_by) == ("succeeded", "a"), info.fields


def test_a_host_stopping_longer_than_its_lease_keeps_its_job_from_the_others(
    start_daemon: Callable[..., Daemon], fleet: FleetClient, redis_url: str, keys: tuple[Path, Path]
) -> None:
    deaf = DEAF.format(grace=2 * PAST_LEASE_S + 2)
    a = start_daemon(host_config(redis_url, keys[1], "a", ("scanner",), fleet=FAST) + deaf, name="a")
    job = fleet.submit("deaf", {}, tag="scanner")
    wait_for(lambda: fleet.show(job).state == "running")
    b = start_daemon(host_config(redis_url, keys[1], "b", ("scanner",), fleet=FAST) + deaf, name="b")
    wait_for(lambda: len(fleet.hosts()) == 2 and all(host.alive for host in fleet.hosts()))
    a.proc.send_signal(15)
    time.sleep(2 * PAST_LEASE_S)  # past the lease twice, a still waits for its run to stop
    assert a.proc.poll() is None
    assert runs_of(b, job) == [] and fleet.show(job).received_by == "a"
    assert a.proc.wait(timeout=30) == 0
    info = fleet.show(job)
    assert (info.state, info.received_by, info.fields.get("cancel_source")) == ("stopped", "a", "shutdown")
    assert runs_of(b, job) == []
    with redis.Redis.from_url(redis_url) as client:
        assert client.xpending("fleet:tag:scanner", GROUP)["pending"] == 0


def test_the_end_of_a_job_is_written_and_acknowledged_only_while_it_is_still_the_hosts(
    redis_url: str,
) -> None:
    stream, key = "fleet:tag:t", job_key("j1")
    with redis.Redis.from_url(redis_url) as client:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        first, second = (client.xadd(stream, {"job": "x"}).decode() for _ in range(2))
        client.xreadgroup(GROUP, "a", {stream: ">"})

        def end(host: str, entry: str) -> int:
            fields = ["state", "stopped", "received_by", host]
            return int(client.eval(END_SCRIPT, 2, key, stream, host, GROUP, entry, *fields))

        # Claimed by b past a's lease, and taken by it: a's late end changes nothing.
        client.xclaim(stream, GROUP, "b", 0, [first])
        client.hset(key, mapping={"state": "running", "received_by": "b"})
        assert end("a", first) == 0
        assert client.hgetall(key) == {b"state": b"running", b"received_by": b"b"}
        assert client.xpending_range(stream, GROUP, first, first, 1)[0]["consumer"] == b"b"
        # Still b's: written and acknowledged.
        assert end("b", first) == 3
        assert client.hget(key, "state") == b"stopped"
        assert client.xpending_range(stream, GROUP, first, first, 1) == []
        # a holds the entry, though received_by was rewritten by hand (any host may): a reports.
        client.hset(key, mapping={"state": "running", "received_by": "x"})
        assert end("a", second) == 3 and client.hget(key, "received_by") == b"a"
        assert client.xpending(stream, GROUP)["pending"] == 0
        # A hash Redis lost is written again; an entry (or a group) it lost is not acknowledged.
        client.delete(key, stream)
        assert end("a", second) == 1 and client.hget(key, "received_by") == b"a"
