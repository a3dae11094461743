"""Fleet members for real: daemons taking signed jobs from a real Redis (docs/fleet.md)."""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pymgr.fleet import jobs
from pymgr.fleet.client import FleetClient
from pymgr.fleet.keys import load_private_key
from pymgr.fleet.keyspace import job_key
from pymgr.fleet.runner import run_key
from tests.conftest import Daemon, unix_http, wait_for
from tests.fleet.conftest import KEY_ID, RedisServer, host_config


def runs_of(daemon: Daemon, job_id: str) -> list[dict[str, Any]]:
    """The task runs a host holds for a job (its run key), through the host's own API."""
    with unix_http(daemon) as http:
        reply = http.post("/v1/modules/tasks/list", json={"key": run_key(job_id)})
    assert reply.status_code == 200, reply.text
    return list(reply.json()["result"])


def test_a_job_pinned_to_a_host_runs_there_and_reports_its_output(
    start_hosts: Callable[..., list[Daemon]], fleet: FleetClient
) -> None:
    a, b = start_hosts(("a", ()), ("b", ()))
    job_id = fleet.submit("echo", {"word": "hello-fleet"}, host="b")
    assert fleet.wait_received(job_id, timeout_s=20).received_by == "b"
    info = fleet.wait(job_id, timeout_s=30)
    assert (info.state, info.exit_code, info.received_by) == ("succeeded", 0, "b")
    assert fleet.output(job_id) == b"hello-fleet\n"
    assert runs_of(a, job_id) == []
    [run] = runs_of(b, job_id)
    assert (run["id"], run["state"], run["started_by"]["transport"]) == (info.task_id, "succeeded", "fleet")
    assert run["started_by"]["fleet_key"] == "console"
    hosts = {host.id: host for host in fleet.hosts()}
    assert set(hosts) == {"a", "b"} and hosts["b"].alive


def test_a_tagged_job_runs_on_exactly_one_host_with_the_tag(
    start_hosts: Callable[..., list[Daemon]], fleet: FleetClient
) -> None:
    started = start_hosts(("a", ("scanner",)), ("b", ("scanner", "eu")), ("c", ()))
    hosts = dict(zip("abc", started))
    ids = [fleet.submit("echo", {"word": f"w{n}"}, tag="scanner") for n in range(8)]
    for job_id in ids:
        info = fleet.wait(job_id, timeout_s=30)
        assert info.state == "succeeded" and info.received_by in ("a", "b")
        held = {name: len(runs_of(host, job_id)) for name, host in hosts.items()}
        assert held == {name: int(name == info.received_by) for name in hosts}, held
    assert fleet.output(ids[0]) == b"w0\n"


def test_a_redelivered_job_does_not_run_twice_on_a_host(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str
) -> None:
    host = start_host("a")
    job_id = fleet.submit("scan", {"task_id": 1, "duration": 2}, host="a")
    wait_for(lambda: fleet.show(job_id).state == "running")
    host.stop(signal.SIGKILL)  # the run goes on under the keeper; the entry stays pending in Redis
    host = start_host("a")  # the same state directory: it re-reads its pending entries from id 0
    info = fleet.wait(job_id, timeout_s=30)
    assert (info.state, info.exit_code) == ("succeeded", 0)
    # The same entry again, as a redelivery (or a replay inside max_age_s) would bring it.
    with redis.Redis.from_url(redis_url) as client:
        [(_, fields)] = client.xrange("fleet:host:a", count=1)
        client.hset(job_key(job_id), "state", "queued")
        client.xadd("fleet:host:a", fields)
    assert fleet.wait(job_id, timeout_s=30).state == "succeeded"
    assert [run["state"] for run in runs_of(host, job_id)] == ["succeeded"]
    assert "fleet job" in host.log()


def _queue(redis_url: str, job: jobs.Job, key: Ed25519PrivateKey, stream: str = "") -> None:
    """Put a job signed with ``key`` into ``stream`` (its target's by default), as a rogue writer could."""
    with redis.Redis.from_url(redis_url) as client:
        client.xadd(stream or job.target.stream, jobs.encode(job, key.sign))


def _refusals(daemon: Daemon, source: str) -> tuple[Counter[str], Counter[str]]:
    """The refusals counted for ``source``: by code and by operation, summed over every window."""
    daemon.stop()  # the refusals are written at the end of their window, or at shutdown
    text = (daemon.dir / "state" / "audit-refused.log").read_text()
    codes: Counter[str] = Counter()
    operations: Counter[str] = Counter()
    for line in map(json.loads, text.splitlines()):
        if line["source"] == source:
            codes.update(line["codes"])
            operations.update(line["operations"])
    return codes, operations


def test_forged_foreign_misdirected_and_old_jobs_are_refused_and_audited(
    start_host: Callable[..., Daemon], redis_url: str, keys: tuple[Path, Path]
) -> None:
    host = start_host("a")
    good = load_private_key(keys[0])
    now = time.time()
    cases = {
        "forged": (
            jobs.Job("forged", "task", "echo", {"word": "x"}, jobs.Target("host", "a"), now, KEY_ID),
            Ed25519PrivateKey.generate(),
            "",
        ),
        "foreign": (
            jobs.Job("foreign", "task", "echo", {"word": "x"}, jobs.Target("host", "a"), now, "rogue"),
            good,
            "",
        ),
        "misdirected": (
            jobs.Job("misdirected", "task", "echo", {"word": "x"}, jobs.Target("host", "b"), now, KEY_ID),
            good,
            "fleet:host:a",
        ),
        "old": (
            jobs.Job("old", "task", "echo", {"word": "x"}, jobs.Target("host", "a"), now - 3600, KEY_ID),
            good,
            "",
        ),
    }
    for job, key, stream in cases.values():
        _queue(redis_url, job, key, stream)
    with redis.Redis.from_url(redis_url) as client:
        client.xadd("fleet:host:a", {"job": b"{}", "sig": b"x"})
        for job_id in cases:
            wait_for(lambda: client.hget(job_key(job_id), "state") == b"refused")
        reasons = {job_id: client.hget(job_key(job_id), "error").decode() for job_id in cases}
        # Every refused entry is acknowledged: none will ever pass, none waits in the pending list.
        wait_for(lambda: client.xpending("fleet:host:a", "pymgr")["pending"] == 0)
    assert "signature does not verify" in reasons["forged"]
    assert "names key 'rogue'" in reasons["foreign"]
    assert "signed for host:b, found in fleet:host:a" in reasons["misdirected"]
    assert "was signed 3600 s ago; at most 300 s either way" in reasons["old"]
    assert runs_of(host, "forged") == [] and runs_of(host, "old") == []
    codes, operations = _refusals(host, "fleet:host:a")
    assert operations == {"fleet.job": 5}
    assert codes == {
        "bad_signature": 1,
        "unknown_key": 1,
        "wrong_target": 1,
        "too_old": 1,
        "malformed": 1,
    }


def test_a_job_the_hosts_policy_does_not_allow_is_refused_and_audited(
    start_host: Callable[..., Daemon], fleet: FleetClient
) -> None:
    host = start_host("a", allow='"tasks.start:echo"')
    allowed = fleet.submit("echo", {"word": "ok"}, host="a")
    denied = fleet.submit("scan", {"task_id": 1, "duration": 0}, host="a")
    action = fleet.submit("demo.echo", {"greeting": "hi"}, host="a", kind="action")
    assert fleet.wait(allowed, timeout_s=30).state == "succeeded"
    for job_id, operation in ((denied, "tasks.start:scan"), (action, "demo.echo")):
        info = fleet.wait(job_id, timeout_s=30)
        assert (info.state, info.received_by) == ("refused", "a")
        assert f"the policy allows fleet:console (fleet job {job_id}) no {operation}" in (info.error or "")
    assert runs_of(host, denied) == []
    _, operations = _refusals(host, "fleet:console")
    assert operations == {"tasks.start:scan": 1, "demo.echo": 1}


def test_an_action_job_runs_through_the_dispatcher_and_returns_its_result(
    start_host: Callable[..., Daemon], fleet: FleetClient
) -> None:
    start_host("a", allow='"demo.echo"')
    job_id = fleet.submit("demo.echo", {"greeting": "hi"}, host="a", kind="action")
    info = fleet.wait(job_id, timeout_s=30)
    assert info.state == "succeeded"
    assert info.result["greeting"] == "hi"


def test_redis_restarted_mid_flight_the_agent_reconnects_and_the_accepted_job_finishes(
    start_host: Callable[..., Daemon], keys: tuple[Path, Path], tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "r")
    server.directory.mkdir()
    server.start()
    try:
        host = start_host("a", url=server.url)
        with FleetClient(server.url, key_id=KEY_ID, signing_key=load_private_key(keys[0])) as fleet:
            job_id = fleet.submit("scan", {"task_id": 1, "duration": 2}, host="a")
            wait_for(lambda: fleet.show(job_id).state == "running")
            server.stop()  # no persistence: Redis comes back empty, without streams or groups
            time.sleep(1)
            server.start()
            info = fleet.wait(job_id, timeout_s=30)
            assert (info.state, info.exit_code, info.task_id) == ("succeeded", 0, 1)
            # The agent made its group again and takes new jobs.
            again = fleet.submit("echo", {"word": "back"}, host="a")
            assert fleet.wait(again, timeout_s=30).state == "succeeded"
        assert "fleet: Redis is unreachable" in host.log()
        assert [run["state"] for run in runs_of(host, job_id)] == ["succeeded"]
    finally:
        server.stop()


def test_a_redelivered_action_job_is_not_called_twice(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str
) -> None:
    host = start_host("a", allow='"demo.echo"')
    job_id = fleet.submit("demo.echo", {"greeting": "once"}, host="a", kind="action")
    assert fleet.wait(job_id, timeout_s=30).state == "succeeded"
    with redis.Redis.from_url(redis_url) as client:
        [(_, fields)] = client.xrange("fleet:host:a", count=1)
        client.xadd("fleet:host:a", fields)
        wait_for(
            lambda: (
                client.xpending("fleet:host:a", "pymgr")["pending"] == 0 and client.xlen("fleet:host:a") == 2
            )
        )
    wait_for(lambda: f"action job {job_id} was called here already" in host.log())
    host.stop()
    audit = (host.dir / "state" / "audit.log").read_text()
    assert audit.count('"greeting":"once"') == 1


def test_a_key_file_that_cannot_be_used_stops_start_up_naming_it(
    start_daemon: Callable[..., Daemon], redis_url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.pub"
    with pytest.raises(
        RuntimeError, match=rf"\[fleet\]: fleet key {re.escape(str(missing))} cannot be checked: No such file"
    ):
        start_daemon(host_config(redis_url, missing, "a"), name="missing")
    not_a_key = tmp_path / "console.pem"
    not_a_key.write_text("hello\n")
    with pytest.raises(
        RuntimeError, match=rf"\[fleet\]: fleet key {re.escape(str(not_a_key))} is not a PEM public key"
    ):
        start_daemon(host_config(redis_url, not_a_key, "a"), name="garbage")
    with pytest.raises(
        RuntimeError,
        match=rf"\[fleet\]: fleet key {re.escape(str(keys[0]))} is not a PEM public key: .*BEGIN PUBLIC KEY",
    ):
        start_daemon(host_config(redis_url, keys[0], "a"), name="private")


async def test_the_async_client_submits_waits_and_reads_like_the_sync_one(
    start_host: Callable[..., Daemon], redis_url: str, keys: tuple[Path, Path]
) -> None:
    from pymgr.fleet import AsyncFleetClient

    start_host("a", ("scanner",))
    async with AsyncFleetClient(redis_url, key_id=KEY_ID, signing_key=load_private_key(keys[0])) as fleet:
        job_id = await fleet.submit("echo", {"word": "async"}, tag="scanner", key="nightly-1")
        assert await fleet.submit("echo", {"word": "again"}, tag="scanner", key="nightly-1") == "nightly-1"
        assert (await fleet.wait_received(job_id, timeout_s=20)).received_by == "a"
        assert (await fleet.wait(job_id, timeout_s=30)).state == "succeeded"
        assert await fleet.output(job_id) == b"async\n"  # the second submit queued nothing
        assert [host.id for host in await fleet.hosts()] == ["a"]
        with pytest.raises(LookupError, match=r"^no fleet job 'nope'"):
            await fleet.show("nope")
        with pytest.raises(ValueError, match=r"give exactly one$"):
            await fleet.submit("echo", {}, host="a", tag="scanner")
        with pytest.raises(
            TimeoutError, match=r"^fleet job nope was not ended within 0.1 s \(state: no hash\)$"
        ):
            await fleet.wait("nope", timeout_s=0.1)


def test_a_local_caller_may_not_take_a_fleet_jobs_run_key(
    start_host: Callable[..., Daemon], fleet: FleetClient
) -> None:
    host = start_host("a")
    # The tests' local caller may start any task (tests/conftest.py); the key's namespace is the fleet's.
    with unix_http(host) as http:
        reply = http.post(
            "/v1/modules/tasks/start",
            json={"type": "echo", "params": {"word": "squat"}, "key": run_key("next-job")},
        )
        assert reply.status_code == 400, reply.text
        assert "'fleet:next-job' starts with 'fleet:', which only fleet jobs' runs use" in reply.text
        assert http.post("/v1/modules/tasks/list", json={}).json()["result"] == []
        reply = http.post(
            "/v1/modules/tasks/start", json={"type": "echo", "params": {"word": "w"}, "key": "fleet"}
        )
        assert reply.status_code == 200, reply.text
    # The job with that id runs, as its own run, not as the local one.
    job_id = fleet.submit("echo", {"word": "mine"}, host="a", key="next-job")
    assert fleet.wait(job_id, timeout_s=30).state == "succeeded" and fleet.output(job_id) == b"mine\n"
    assert len(runs_of(host, job_id)) == 1
