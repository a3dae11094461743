"""Dead hosts, for real: daemons killed with -9, their tagged jobs claimed, pinned ones lost, dead letters."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import redis

from pymgr.fleet.client import FleetClient
from pymgr.fleet.keyspace import DEAD, GROUP, HOSTS, REAPER, heartbeat_key
from tests.conftest import Daemon, wait_for
from tests.fleet.test_fleet_hosts import runs_of

#: A short lease keeps these tests fast: a host without a heartbeat for 2 s is dead.
LEASE_S = 2
FAST = f"lease_s = {LEASE_S}"
#: Long enough for anything the lease allows to have happened: an entry is claimable ``LEASE_S`` after its
#: delivery (or after its host's last heartbeat), and a round comes every third of the lease; 1 s more.
PAST_LEASE_S = LEASE_S + 1


def _pending(redis_url: str, stream: str) -> int:
    with redis.Redis.from_url(redis_url) as client:
        return int(client.xpending(stream, GROUP)["pending"])


def _a_tagged_job_running(
    start_hosts: Callable[..., list[Daemon]], fleet: FleetClient, duration_s: float
) -> tuple[dict[str, Daemon], str, str, str]:
    """Hosts a and b tagged scanner, and a scan of ``duration_s`` running on one of them: the hosts,
    the job, the host that took it and the other."""
    hosts = dict(zip("ab", start_hosts(("a", ("scanner",)), ("b", ("scanner",)), fleet=FAST)))
    job_id = fleet.submit("scan", {"task_id": 1, "duration": duration_s}, tag="scanner")
    wait_for(lambda: fleet.show(job_id).state == "running")
    first = fleet.show(job_id).received_by
    assert first in hosts
    return hosts, job_id, first, "b" if first == "a" else "a"


def test_a_dead_hosts_tagged_job_is_claimed_and_finished_by_another_host_with_the_tag(
    start_host: Callable[..., Daemon],
    start_hosts: Callable[..., list[Daemon]],
    fleet: FleetClient,
    redis_url: str,
) -> None:
    hosts, job_id, first, other = _a_tagged_job_running(start_hosts, fleet, PAST_LEASE_S + 1)
    # A live host keeps its long job past the lease: its entry is idle, but its heartbeat is there.
    time.sleep(PAST_LEASE_S)
    assert fleet.show(job_id).received_by == first and runs_of(hosts[other], job_id) == []
    hosts[first].stop(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: fleet.show(job_id).received_by == other, timeout_s=20)
    assert time.monotonic() - killed_at > LEASE_S / 3  # not before its heartbeat could have run out
    info = fleet.wait(job_id, timeout_s=30)
    assert (info.state, info.exit_code, info.received_by) == ("succeeded", 0, other)
    assert [run["state"] for run in runs_of(hosts[other], job_id)] == ["succeeded"]
    assert f"from {first} (no heartbeat" in hosts[other].log()
    assert _pending(redis_url, "fleet:tag:scanner") == 0
    # The killed host comes back: its entry is gone from its pending list, it starts no second run.
    back = start_host(first, ("scanner",), fleet=FAST)
    time.sleep(1)
    assert len(runs_of(back, job_id)) == 1  # the run it had started before it was killed
    assert fleet.show(job_id).received_by == other


def test_a_job_pinned_to_a_dead_host_is_marked_lost_once_its_lease_runs_out(
    start_host: Callable[..., Daemon],
    start_hosts: Callable[..., list[Daemon]],
    fleet: FleetClient,
    redis_url: str,
) -> None:
    a, b = start_hosts(("a", ()), ("b", ()), fleet=FAST)
    taken = fleet.submit("scan", {"task_id": 1, "duration": 10}, host="a")
    wait_for(lambda: fleet.show(taken).state == "running")
    a.stop(signal.SIGKILL)
    queued = fleet.submit("echo", {"word": "never"}, host="a")  # queued for a host that is dead
    for job_id in (taken, queued):
        info = fleet.wait(job_id, timeout_s=20)
        assert (info.state, info.fields["reaped_by"]) == ("lost", "b"), info
    assert "host a stopped sending heartbeats and its lease (2 s) ran out" in (fleet.show(taken).error or "")
    assert "host a had no heartbeat for 2 s; the job was never delivered" in (fleet.show(queued).error or "")
    with redis.Redis.from_url(redis_url) as client:
        assert client.xpending("fleet:host:a", GROUP)["pending"] == 0
        assert client.xlen("fleet:host:a") == 1  # the never-delivered entry is deleted, not left for a
    assert "fleet: job" in b.log() and "is lost" in b.log()
    # The host comes back: a job marked lost is not run there after all.
    back = start_host("a", fleet=FAST)
    echo = fleet.submit("echo", {"word": "back"}, host="a")
    assert fleet.wait(echo, timeout_s=20).state == "succeeded"
    assert runs_of(back, queued) == [] and fleet.show(queued).state == "lost"


def test_a_job_delivered_more_than_max_deliveries_times_goes_to_the_dead_letter_stream(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str
) -> None:
    poison = fleet.submit("echo", {"word": "poison"}, tag="scanner")
    fine = fleet.submit("echo", {"word": "fine"}, tag="scanner")
    with redis.Redis.from_url(redis_url) as client:
        # Taken by a host that died before it ran them (no heartbeat), delivered 3 times and once.
        client.xgroup_create("fleet:tag:scanner", GROUP, id="0")
        [(_, entries)] = client.xreadgroup(GROUP, "gone", {"fleet:tag:scanner": ">"})
        (poison_entry, poison_fields), (fine_entry, _) = entries
        client.xclaim("fleet:tag:scanner", GROUP, "gone", 0, [poison_entry], idle=60_000, retrycount=3)
        client.xclaim("fleet:tag:scanner", GROUP, "gone", 0, [fine_entry], idle=60_000, retrycount=1)
    host = start_host("b", ("scanner",), fleet=f"{FAST}\nmax_deliveries = 3")
    assert fleet.wait(fine, timeout_s=20).received_by == "b"
    info = fleet.wait(poison, timeout_s=20)
    assert info.state == "dead" and info.fields["deliveries"] == "4"
    assert info.error == "delivered 4 times without an end, more than max_deliveries (3): given up by b"
    with redis.Redis.from_url(redis_url) as client:
        [(_, dead)] = client.xrange(DEAD)
        # fine's XACK comes after its final state, which may be written after poison's dead letter.
        wait_for(lambda: client.xpending("fleet:tag:scanner", GROUP)["pending"] == 0)
    assert (dead[b"job"], dead[b"sig"], dead[b"entry"]) == (
        poison_fields[b"job"],
        poison_fields[b"sig"],
        poison_entry,
    )
    assert (dead[b"stream"], dead[b"deliveries"], dead[b"host"]) == (b"fleet:tag:scanner", b"4", b"b")
    assert runs_of(host, poison) == []


def test_a_host_that_keeps_dying_gives_up_a_job_it_never_started_but_follows_the_run_it_has(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str
) -> None:
    settings = f"{FAST}\nmax_deliveries = 1"
    host = start_host("a", fleet=settings)
    started = fleet.submit("scan", {"task_id": 1, "duration": 2}, host="a")
    wait_for(lambda: fleet.show(started).state == "running")
    host.stop(signal.SIGKILL)
    unstarted = fleet.submit("echo", {"word": "x"}, host="a")
    with redis.Redis.from_url(redis_url) as client:  # read by the host just before it died
        client.xreadgroup(GROUP, "a", {"fleet:host:a": ">"})
    host = start_host("a", fleet=settings)  # its second delivery of both: the re-read of its pending entries
    assert fleet.wait(started, timeout_s=30).state == "succeeded"  # its run is in the store: followed
    assert fleet.wait(unstarted, timeout_s=20).state == "dead"
    assert runs_of(host, unstarted) == [] and len(runs_of(host, started)) == 1
    assert _pending(redis_url, "fleet:host:a") == 0


def test_exactly_one_live_daemon_is_the_reaper_and_another_takes_over_when_it_dies(
    start_host: Callable[..., Daemon], start_hosts: Callable[..., list[Daemon]], redis_url: str
) -> None:
    hosts = dict(zip("ab", start_hosts(("a", ()), ("b", ()), fleet=FAST)))
    with redis.Redis.from_url(redis_url) as client:
        holder = wait_for(lambda: client.get(REAPER)).decode()
        assert 0 < client.pttl(REAPER) <= LEASE_S * 1000
        time.sleep(LEASE_S + 0.5)  # renewed, not handed around
        assert client.get(REAPER).decode() == holder
        other = "b" if holder == "a" else "a"
        assert "is now the reaper" in hosts[holder].log()
        assert "is now the reaper" not in hosts[other].log()
        hosts[holder].stop(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: client.get(REAPER) == other.encode(), timeout_s=LEASE_S + 10)
        assert time.monotonic() - killed_at > LEASE_S / 3  # the lock ran out first
        # A clean stop lets the lock go at once: the next host takes it within a round.
        hosts["c"] = start_host("c", fleet=FAST)
        wait_for(lambda: client.get("fleet:hb:c"))
        hosts[other].stop()
        stopped_at = time.monotonic()
        wait_for(lambda: client.get(REAPER) == b"c", timeout_s=LEASE_S + 10)
        assert time.monotonic() - stopped_at < LEASE_S


def test_a_host_keeps_its_heartbeat_when_redis_refuses_a_write_and_keeps_its_tagged_job(
    start_host: Callable[..., Daemon],
    start_hosts: Callable[..., list[Daemon]],
    fleet: FleetClient,
    redis_url: str,
) -> None:
    hosts, job_id, first, other = _a_tagged_job_running(start_hosts, fleet, PAST_LEASE_S + 2)
    # Every SADD to the set of hosts now answers WRONGTYPE, a ResponseError, not a lost Redis.
    with redis.Redis.from_url(redis_url) as client:
        client.set(HOSTS, "not a set")
        time.sleep(PAST_LEASE_S)
        assert client.exists(heartbeat_key(first)) and client.exists(heartbeat_key(other))
    assert fleet.show(job_id).received_by == first and runs_of(hosts[other], job_id) == []
    assert fleet.wait(job_id, timeout_s=30).state == "succeeded"
    # A host started now cannot join the set of hosts, but beats all the same, and says why once.
    late = start_host("c", fleet=FAST)
    wait_for(lambda: "the host is not in fleet:hosts (WRONGTYPE" in late.log())
    time.sleep(LEASE_S / 3 + 0.2)  # a beat later: it still beats, and said why once
    with redis.Redis.from_url(redis_url) as client:
        assert client.exists(heartbeat_key("c"))
    assert late.log().count("the host is not in fleet:hosts (WRONGTYPE") == 1


def test_a_host_that_cannot_read_its_streams_sends_no_heartbeat_and_its_tagged_job_runs_elsewhere(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str
) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.xgroup_create("fleet:tag:scanner", GROUP, id="0", mkstream=True)
        job_id = fleet.submit("scan", {"task_id": 1, "duration": 0}, tag="scanner")
        # Read by a before it restarted (pending on a); a's own stream is now no stream: every session
        # of a fails on XGROUP CREATE (WRONGTYPE), so a can take up nothing.
        client.xreadgroup(GROUP, "a", {"fleet:tag:scanner": ">"})
        client.set("fleet:host:a", "not a stream")
        a = start_host("a", ("scanner",), fleet=FAST)
        start_host("b", ("scanner",), fleet=FAST)
        info = fleet.wait(job_id, timeout_s=30)
        assert (info.state, info.received_by) == ("succeeded", "b"), info.fields
        assert "WRONGTYPE" in a.log() and not client.exists(heartbeat_key("a"))


def test_a_host_whose_reads_start_failing_stops_its_heartbeat(
    start_host: Callable[..., Daemon], redis_url: str
) -> None:
    a = start_host("a", ("scanner",), fleet=FAST)
    with redis.Redis.from_url(redis_url) as client:
        wait_for(lambda: client.exists(heartbeat_key("a")))
        client.delete("fleet:host:a")
        client.set("fleet:host:a", "not a stream")  # every read fails from now on
        wait_for(lambda: not client.exists(heartbeat_key("a")), timeout_s=PAST_LEASE_S + 5)
        time.sleep(LEASE_S)  # its sessions keep failing: it does not beat again
        assert not client.exists(heartbeat_key("a"))
    assert "WRONGTYPE" in a.log()
