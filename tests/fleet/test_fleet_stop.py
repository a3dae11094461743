"""Stopping fleet jobs for real: the control stream, the whole tree on the host, a host cut off, forgeries."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pymgr.fleet import jobs
from pymgr.fleet.client import FleetClient
from pymgr.fleet.keys import load_private_key
from pymgr.fleet.keyspace import job_key
from tests.conftest import Daemon, wait_for
from tests.fleet.conftest import KEY_ID
from tests.fleet.test_fleet_hosts import _refusals, runs_of

#: What the tests' fleet key may do on the stop tests' hosts.
MAY_STOP = '"tasks.start:*", "tasks.stop:*"'


def _tree(leader: int) -> list[psutil.Process]:
    """The run's processes: its leader and every process with the leader's marker (a setsid grandchild too)."""
    marker = psutil.Process(leader).environ()["PYMGR_TASK_MARKER"]
    found = []
    for proc in psutil.process_iter(["environ"]):
        if (proc.info.get("environ") or {}).get("PYMGR_TASK_MARKER") == marker:
            found.append(proc)
    return found


def _alive(procs: list[psutil.Process]) -> bool:
    return any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)


def _running_tree(fleet: FleetClient, host: Daemon, job_id: str) -> list[psutil.Process]:
    """The processes of a running scan job with an escaped grandchild, once the grandchild is up."""
    wait_for(lambda: b"grandchild pid" in fleet.output(job_id))
    [run] = runs_of(host, job_id)
    tree = wait_for(lambda: (found := _tree(run["pid"])) and len(found) >= 2 and found)
    assert any(os.getsid(p.pid) == p.pid != run["pid"] for p in tree)  # one escaped the run's session
    return tree


def test_stopping_a_running_job_stops_its_whole_tree_on_its_host(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str
) -> None:
    host = start_host("a", allow=MAY_STOP)
    job_id = fleet.submit("scan", {"task_id": 1, "duration": 60, "fork_child": True}, host="a")
    tree = _running_tree(fleet, host, job_id)
    stopped = fleet.stop(job_id)
    assert (stopped.how, stopped.host, stopped.state) == ("sent", "a", "running")
    info = fleet.wait(job_id, timeout_s=30)
    assert (info.state, info.fields["task_state"]) == ("stopped", "stopped")
    wait_for(lambda: not _alive(tree))
    assert b"stopped by SIGTERM" in fleet.output(job_id)
    # Stopping an ended job sends nothing; the control stream was read and acknowledged.
    assert fleet.stop(job_id).how == "ended"
    with redis.Redis.from_url(redis_url) as client:
        assert client.xpending("fleet:ctl:a", "pymgr")["pending"] == 0
    assert "run 1 stopped" in host.log()


def test_a_queued_job_stopped_is_cancelled_and_no_host_runs_it(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str
) -> None:
    job_id = fleet.submit("echo", {"word": "never"}, host="a")  # host a is not up yet
    assert fleet.stop(job_id).how == "cancelled"
    assert fleet.show(job_id).state == "cancelled"
    host = start_host("a", allow=MAY_STOP)
    with redis.Redis.from_url(redis_url) as client:
        # The host read the entry, found the job cancelled, and acknowledged it without running it.
        wait_for(lambda: [g["entries-read"] for g in client.xinfo_groups("fleet:host:a")] == [1])
        wait_for(lambda: client.xpending("fleet:host:a", "pymgr")["pending"] == 0)
    assert fleet.show(job_id).state == "cancelled" and runs_of(host, job_id) == []
    assert f"fleet job {job_id} task:echo -> cancelled" in host.log()
    assert fleet.stop(job_id).how == "cancelled"


def test_a_host_cut_off_applies_the_stop_when_it_is_back(
    start_host: Callable[..., Daemon], fleet: FleetClient
) -> None:
    host = start_host("a", allow=MAY_STOP)
    job_id = fleet.submit("scan", {"task_id": 1, "duration": 60, "fork_child": True}, host="a")
    tree = _running_tree(fleet, host, job_id)
    host.proc.send_signal(signal.SIGSTOP)  # the daemon hears nothing; its run goes on under the keeper
    try:
        assert fleet.stop(job_id).how == "sent"
        time.sleep(2)
        assert _alive(tree) and fleet.show(job_id).state == "running"
    finally:
        host.proc.send_signal(signal.SIGCONT)
    assert fleet.wait(job_id, timeout_s=30).state == "stopped"
    wait_for(lambda: not _alive(tree))


def test_forged_and_unsigned_stops_are_refused_and_audited_and_policy_decides(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str
) -> None:
    host = start_host("a")  # its policy lets the key start tasks, not stop them
    job_id = fleet.submit("scan", {"task_id": 1, "duration": 60}, host="a")
    wait_for(lambda: fleet.show(job_id).state == "running")
    forged = jobs.Job("f1", "control", "stop", {"job": job_id}, jobs.Target("ctl", "a"), time.time(), KEY_ID)
    with redis.Redis.from_url(redis_url) as client:
        client.xadd("fleet:ctl:a", jobs.encode(forged, Ed25519PrivateKey.generate().sign))
        client.xadd("fleet:ctl:a", {"job": jobs.canonical(forged)})  # unsigned
        assert fleet.stop(job_id).how == "sent"  # signed, but the host's policy says no
        wait_for(lambda: client.hget(f"fleet:job:{job_id}", "stop_error"))
        wait_for(lambda: client.xpending("fleet:ctl:a", "pymgr")["pending"] == 0)
        error = client.hget(f"fleet:job:{job_id}", "stop_error").decode()
    assert "the policy allows fleet:console" in error and "no tasks.stop" in error
    assert fleet.show(job_id).state == "running"
    codes, operations = _refusals(host, "fleet:ctl:a")
    assert (operations, codes) == ({"fleet.stop": 2}, {"bad_signature": 1, "malformed": 1})
    _, operations = _refusals(host, "fleet:console")
    assert operations == {"tasks.stop:scan": 1}
    with FleetClient(redis_url) as unsigned, pytest.raises(ValueError, match="need a signing key"):
        unsigned.stop(job_id)


async def test_the_async_client_follows_stops_and_lists_like_the_sync_one(
    start_host: Callable[..., Daemon], redis_url: str, keys: tuple[Path, Path]
) -> None:
    from pymgr.fleet import AsyncFleetClient

    start_host("a", allow=MAY_STOP)
    async with AsyncFleetClient(redis_url, key_id=KEY_ID, signing_key=load_private_key(keys[0])) as fleet:
        short = await fleet.submit("scan", {"task_id": 1, "duration": 1}, host="a")
        chunks = [chunk async for chunk in fleet.follow(short)]
        assert (await fleet.show(short)).state == "succeeded"
        followed = b"".join(chunk.data for chunk in chunks)
        assert followed == await fleet.output(short) and b"scan 1: 100%" in followed
        long = await fleet.submit("scan", {"task_id": 2, "duration": 60}, host="a")
        await fleet.wait_received(long, timeout_s=20)  # taken; its run may not have started yet
        assert (await fleet.stop(long)).how == "sent"
        assert (await fleet.wait(long, timeout_s=30)).state == "stopped"
        queued = await fleet.submit("echo", {"word": "x"}, host="nobody")
        assert (await fleet.stop(queued)).how == "cancelled"
        assert [job.id for job in await fleet.jobs()] == [queued, long, short]
        assert [job.id for job in await fleet.jobs(state="stopped")] == [long]
        with pytest.raises(ValueError, match=r"^state 'nope' is not a job's state; one of queued, "):
            await fleet.jobs(state="nope")
        with pytest.raises(LookupError, match=r"^no fleet job 'nope'"):
            await fleet.stop("nope")


def test_a_job_cancelled_while_queued_stays_cancelled_when_read_too_late_to_run(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str
) -> None:
    job_id = fleet.submit("echo", {"word": "never"}, host="a")
    assert fleet.stop(job_id).how == "cancelled"
    time.sleep(1.2)  # past the host's max_age_s: the entry is refused as too old when it is read
    host = start_host("a", allow=MAY_STOP, fleet="lease_s = 3\nmax_age_s = 1")
    with redis.Redis.from_url(redis_url) as client:
        # The group is made by the agent once it is up; until then there is nothing to ask (NOGROUP).
        wait_for(lambda: [g["entries-read"] for g in client.xinfo_groups("fleet:host:a")] == [1])
        wait_for(lambda: client.xpending("fleet:host:a", "pymgr")["pending"] == 0)
    assert "at most 1 s either way" in host.log()  # refused as too old
    assert fleet.show(job_id).state == "cancelled" and runs_of(host, job_id) == []


def test_a_pinned_jobs_stop_goes_to_its_host_whatever_received_by_says(
    start_hosts: Callable[..., list[Daemon]], fleet: FleetClient, redis_url: str
) -> None:
    a, b = start_hosts(("a", ()), ("b", ()), allow=MAY_STOP)
    job_id = fleet.submit("scan", {"task_id": 1, "duration": 60}, host="a")
    wait_for(lambda: fleet.show(job_id).state == "running")
    # Any host may write a job's hash (docs/fleet.md, the ACL): one tries to turn the stop away.
    with redis.Redis.from_url(redis_url) as client:
        client.hset(job_key(job_id), "received_by", "b")
    stopped = fleet.stop(job_id)
    assert (stopped.how, stopped.host) == ("sent", "a")
    assert fleet.wait(job_id, timeout_s=30).state == "stopped"
    assert [run["state"] for run in runs_of(a, job_id)] == ["stopped"] and runs_of(b, job_id) == []


def test_a_stop_that_fails_to_apply_holds_back_no_later_stop_and_is_given_up(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str, keys: tuple[Path, Path]
) -> None:
    host = start_host("a", allow=MAY_STOP)  # max_deliveries: 3 (the default)
    job_id = fleet.submit("scan", {"task_id": 1, "duration": 60}, host="a")
    wait_for(lambda: fleet.show(job_id).state == "running")
    # A well signed stop whose job's "hash" is a string: reading it answers WRONGTYPE, every time.
    bad = jobs.Job("s1", "control", "stop", {"job": "broken"}, jobs.Target("ctl", "a"), time.time(), KEY_ID)
    with redis.Redis.from_url(redis_url) as client:
        client.set(job_key("broken"), "not a hash")
        client.xadd("fleet:ctl:a", jobs.encode(bad, load_private_key(keys[0]).sign))
        assert fleet.stop(job_id).how == "sent"
        assert fleet.wait(job_id, timeout_s=30).state == "stopped"
        wait_for(lambda: client.xpending("fleet:ctl:a", "pymgr")["pending"] == 0)
    assert "failed (try 2 of 3)" in host.log() and "WRONGTYPE" in host.log()
    codes, operations = _refusals(host, "fleet:ctl:a")
    assert (operations, codes) == ({"fleet.stop": 1}, {"failed": 1})
