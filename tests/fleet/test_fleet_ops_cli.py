"""``pymgr fleet stop|list|logs|acl`` against a real Redis and real fleet members."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pymgr.fleet.acl import HostSpec
from pymgr.fleet.api import CLIENT_NAME
from pymgr.fleet.client import FleetClient
from pymgr.fleet.keys import load_private_key
from pymgr.fleet import jobs
from pymgr.fleet.keyspace import GROUP, REAPER, job_key
from pymgr.fleet.reaper import LOCK_SCRIPT
from tests.conftest import PYMGR, Daemon, wait_for
from tests.fleet.conftest import KEY_ID, host_config
from tests.fleet.test_fleet_cli import pymgr
from tests.fleet.test_fleet_dead_hosts import LEASE_S
from tests.fleet.test_fleet_hosts import _queue
from tests.fleet.test_fleet_stop import MAY_STOP


def _signing(redis_url: str, keys: tuple[Path, Path]) -> list[str]:
    return ["--redis", redis_url, "--key-id", KEY_ID, "--signing-key", str(keys[0])]


def test_list_shows_recent_jobs_newest_first_with_filters_and_the_index_is_capped(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str, keys: tuple[Path, Path]
) -> None:
    start_host("a", ("scanner",))
    first = fleet.submit("echo", {"word": "1"}, host="a")
    second = fleet.submit("echo", {"word": "2"}, tag="scanner")
    third = fleet.submit("echo", {"word": "3"}, host="nobody")
    for job_id in (first, second):
        fleet.wait(job_id, timeout_s=30)
    out = pymgr("--json", "fleet", "list", "--redis", redis_url)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [job["id"] for job in listed] == [third, second, first]
    assert [job["state"] for job in listed] == ["queued", "succeeded", "succeeded"]
    assert listed[1]["received_by"] == "a" and listed[1]["target"] == "tag:scanner"

    def ids(*filters: str) -> list[str]:
        out = pymgr("--json", "fleet", "list", "--redis", redis_url, *filters)
        assert out.returncode == 0, out.stderr
        return [job["id"] for job in json.loads(out.stdout)]

    assert ids("--state", "succeeded") == [second, first]
    assert ids("--host", "a") == [second, first]  # taken by a, or pinned to it
    assert ids("--host", "nobody") == [third]
    assert ids("--tag", "scanner") == [second]
    assert ids("--limit", "1") == [third]
    out = pymgr("fleet", "list", "--redis", redis_url, "--limit", "1")
    assert out.stdout.startswith(f"{third}\techo\thost:nobody\tqueued\t-\t")
    assert pymgr("fleet", "list", "--redis", redis_url, "--limit", "0").returncode == 2
    out = pymgr("fleet", "list", "--redis", redis_url, "--state", "done")
    assert out.returncode == 2 and "state 'done' is not a job's state; one of queued," in out.stderr
    with FleetClient(
        redis_url, key_id=KEY_ID, signing_key=load_private_key(keys[0]), index_max_jobs=2
    ) as small:
        fourth = small.submit("echo", {"word": "4"}, host="nobody")
        assert [job.id for job in small.jobs()] == [fourth, third]  # the oldest left the index
        with pytest.raises(ValueError, match=r"^limit must be between 1 and 1000, not 0$"):
            small.jobs(limit=0)
    with pytest.raises(ValueError, match=r"^index_max_jobs must be at least 1, not 0$"):
        FleetClient(redis_url, index_max_jobs=0)
    burst = [fleet.submit("echo", {"word": "b"}, host="nobody") for _ in range(30)]  # many within 1 ms
    assert [job.id for job in fleet.jobs(limit=30)] == burst[::-1]


def _blocked_client_ids(admin: redis.Redis) -> list[int]:
    """The follower's connections blocked in XREAD: a cut there is one it notices (a connection cut
    between two reads is opened again by redis-py without a word)."""
    clients = admin.client_list()
    return [c["id"] for c in clients if c["name"] == CLIENT_NAME and "b" in c["flags"]]


def test_logs_follow_a_run_to_its_end_through_dropped_connections(
    start_host: Callable[..., Daemon], redis_url: str, keys: tuple[Path, Path]
) -> None:
    start_host("a")
    with FleetClient(redis_url, key_id=KEY_ID, signing_key=load_private_key(keys[0])) as fleet:
        job_id = fleet.submit("scan", {"task_id": 7, "duration": 6}, host="a")
    follower = subprocess.Popen(
        [str(PYMGR), "fleet", "logs", job_id, "-f", "--no-progress", "--redis", redis_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    kills = 0
    with redis.Redis.from_url(redis_url) as admin:
        wait_for(lambda: admin.hget(f"fleet:job:{job_id}", "state") == b"running")
        for _ in range(3):  # cut the follower's connections mid-run, three times
            for client_id in wait_for(lambda: _blocked_client_ids(admin)):
                kills += admin.client_kill_filter(_id=client_id)
            time.sleep(0.5)
        assert admin.hget(f"fleet:job:{job_id}", "state") == b"running"  # the cuts were mid-run
        out, err = follower.communicate(timeout=60)
        assert admin.hget(f"fleet:job:{job_id}", "state") == b"succeeded"
        whole = b"".join(fields[b"data"] for _, fields in admin.xrange(f"fleet:job:{job_id}:out"))
    assert follower.returncode == 0, err
    assert kills >= 3 and err.decode().count("Redis went away") >= 3, err
    # No gap, nothing twice; without the progress lines (--no-progress), as the console's log view.
    assert re.search(rb"^PYMGR_PROGRESS \d+ scan 7\n", whole, flags=re.MULTILINE)
    assert out == re.sub(rb"^PYMGR_PROGRESS .*\n", b"", whole, flags=re.MULTILINE)
    assert out.startswith(b"scan 7: 0%") and b"scan 7: 100%" in out and b"PYMGR_PROGRESS" not in out
    plain = pymgr("fleet", "logs", job_id, "--redis", redis_url)  # by default, as the run wrote it
    assert plain.stdout.encode() == whole
    missing = pymgr("fleet", "logs", "nope", "-f", "--redis", redis_url)
    assert missing.returncode == 1 and "no fleet job 'nope'" in missing.stderr


def test_stop_from_the_command_line(
    start_host: Callable[..., Daemon], fleet: FleetClient, redis_url: str, keys: tuple[Path, Path]
) -> None:
    start_host("a", allow=MAY_STOP)
    running = fleet.submit("scan", {"task_id": 1, "duration": 60}, host="a")
    wait_for(lambda: fleet.show(running).state == "running")
    out = pymgr("fleet", "stop", running, *_signing(redis_url, keys))
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"job {running}: stop sent to host a\njob {running}: stopped on a\n"
    queued = fleet.submit("echo", {"word": "x"}, host="nobody")
    out = pymgr("--json", "fleet", "stop", queued, *_signing(redis_url, keys))
    assert json.loads(out.stdout)["stop"] == {
        "job_id": queued,
        "how": "cancelled",
        "host": None,
        "state": "cancelled",
    }
    out = pymgr("fleet", "stop", queued, "--redis", redis_url)
    assert out.returncode == 2 and "stopping needs --key-id ID and --signing-key FILE" in out.stderr
    out = pymgr("fleet", "stop", "nope", *_signing(redis_url, keys))
    assert out.returncode == 1 and "no fleet job 'nope'" in out.stderr


@pytest.fixture
def acl_users(redis_url: str) -> Iterator[list[str]]:
    """The ACL users a test makes, deleted after it (Redis keeps users across FLUSHALL)."""
    users = ["fleet-host-a", "fleet-host-b", "fleet-host-c", "fleet-submitter-console"]
    yield users
    with redis.Redis.from_url(redis_url) as admin:
        admin.acl_deluser(*users)


@pytest.fixture
def secrets(tmp_path: Path, acl_users: list[str]) -> Path:
    """A --password-dir: each ACL user's password is ``pw-<user>``."""
    directory = tmp_path / "secrets"
    directory.mkdir()
    for user in acl_users:
        (directory / f"{user}.pass").write_text(f"pw-{user}\n")
        (directory / f"{user}.pass").chmod(0o600)
    return directory


def test_acl_lines_confine_each_host_to_its_own_keys(
    start_daemon: Callable[..., Daemon], redis_url: str, keys: tuple[Path, Path], secrets: Path
) -> None:
    out = pymgr("fleet", "acl", "a:scanner", "b", "--password-dir", str(secrets))
    assert out.returncode == 0, out.stderr
    assert "no --reapers: no host may mark dead hosts' pinned jobs lost" in out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3 and "pw-" not in out.stdout  # passwords only as their SHA-256
    with redis.Redis.from_url(redis_url) as admin:
        for line in lines:
            assert admin.execute_command(*shlex.split(line)) in (b"OK", "OK", True)
        admin.acl_log_reset()
    config = host_config(redis_url, keys[1], "a", ("scanner",), MAY_STOP).replace(
        "[fleet]\n", f'[fleet]\nusername = "fleet-host-a"\npassword_file = "{secrets}/fleet-host-a.pass"\n'
    )
    daemon = start_daemon(config, name="a")
    signing = load_private_key(keys[0])
    submitter = {"username": "fleet-submitter-console", "password": "pw-fleet-submitter-console"}
    with FleetClient(redis_url, key_id=KEY_ID, signing_key=signing, **submitter) as fleet:
        tagged = fleet.submit("echo", {"word": "confined"}, tag="scanner")
        assert fleet.wait(tagged, timeout_s=30).state == "succeeded"
        assert fleet.output(tagged) == b"confined\n" and [h.id for h in fleet.hosts()] == ["a"]
        long = fleet.submit("scan", {"task_id": 1, "duration": 60}, host="a")
        wait_for(lambda: fleet.show(long).state == "running")
        assert fleet.stop(long).how == "sent" and fleet.wait(long, timeout_s=30).state == "stopped"
        assert [job.id for job in fleet.jobs()] == [long, tagged]
    # A forged job is marked refused under the host's user (the refuse script: EVALSHA) and acknowledged.
    forged = jobs.Job("forged", "task", "echo", {"word": "x"}, jobs.Target("host", "a"), time.time(), KEY_ID)
    _queue(redis_url, forged, Ed25519PrivateKey.generate())
    with redis.Redis.from_url(redis_url) as admin:
        wait_for(lambda: admin.hget(job_key("forged"), "state") == b"refused")
        wait_for(lambda: admin.xpending("fleet:host:a", GROUP)["pending"] == 0)
        # Its work refused nothing but the reaper lock (below).
        denied = {entry["object"] for entry in admin.acl_log() if entry["username"] == "fleet-host-a"}
        assert denied == {"fleet:reaper"}, denied
    # Not made a reaper by the ACL, but [fleet] reaper left true: it says so once, and still works.
    assert daemon.log().count("Redis user may not take the reaper lock") == 1
    host_a = redis.Redis.from_url(redis_url, username="fleet-host-a", password="pw-fleet-host-a")
    submitting = redis.Redis.from_url(redis_url, **submitter)
    with host_a, submitting:
        refused = [
            lambda: host_a.xadd("fleet:host:b", {"job": "x", "sig": "y"}),
            lambda: host_a.xreadgroup("pymgr", "a", {"fleet:host:b": ">"}),
            lambda: host_a.set("fleet:hb:b", "{}"),
            lambda: host_a.xadd("fleet:tag:scanner", {"a": "b"}, maxlen=0, approximate=False),
            lambda: host_a.set("fleet:hosts", "x"),
            lambda: host_a.xadd("fleet:job:x", {"a": "b"}),
            lambda: host_a.hset("fleet:hb:a", "a", "b"),
            lambda: host_a.srem("fleet:hosts", "b"),
            lambda: host_a.xadd("fleet:ctl:b", {"job": "x"}),
            lambda: host_a.flushall(),
            lambda: submitting.xreadgroup("pymgr", "x", {"fleet:host:a": ">"}),
            lambda: submitting.set("fleet:hb:a", "{}"),
        ]
        for command in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                command()
    assert HostSpec.parse("b") == HostSpec("b", ())
    out = pymgr("fleet", "acl", "a:bad tag")
    assert out.returncode == 2 and "a host is ID or ID:TAG,TAG" in out.stderr
    out = pymgr("fleet", "acl", "a", "--reapers", "a,z")
    assert (out.returncode, out.stderr) == (2, "error: reapers z: not among the hosts given\n")


def test_acl_refuses_a_host_id_tag_or_submitter_name_that_ends_in_a_newline() -> None:
    for text in ("a\n", "a:scanner\n"):
        out = pymgr("fleet", "acl", text)
        assert out.returncode == 2 and "a host is ID or ID:TAG,TAG" in out.stderr, out.stderr
    out = pymgr("fleet", "acl", "a", "--submitter", "console\n")
    assert out.returncode == 2 and "submitter 'console\\n': letters, digits" in out.stderr, out.stderr


def _confined(redis_url: str, public_key: Path, secrets: Path, host_id: str, reaper: bool) -> str:
    """A host's config as its ACL user, with the short lease of the dead-host tests; b and c have the tag."""
    user = f"fleet-host-{host_id}"
    fleet = f"lease_s = {LEASE_S}\nreaper = {'true' if reaper else 'false'}\nforget_host_after_s = 1"
    tags = ("scanner",) if host_id in ("b", "c") else ()
    return host_config(redis_url, public_key, host_id, tags, fleet=fleet).replace(
        "[fleet]\n", f'[fleet]\nusername = "{user}"\npassword_file = "{secrets}/{user}.pass"\n'
    )


def test_only_the_hosts_the_acl_makes_reapers_reap_and_the_others_still_claim(
    start_daemon: Callable[..., Daemon],
    start_daemons: Callable[..., list[Daemon]],
    redis_url: str,
    keys: tuple[Path, Path],
    secrets: Path,
) -> None:
    out = pymgr(
        "fleet",
        "acl",
        "a",
        "b:scanner",
        "c:scanner",
        "--reapers",
        "a",
        "--password-dir",
        str(secrets),
    )
    assert out.returncode == 0 and out.stderr == "", out.stderr
    signing = load_private_key(keys[0])
    with (
        redis.Redis.from_url(redis_url) as admin,
        FleetClient(redis_url, key_id=KEY_ID, signing_key=signing) as fleet,
    ):
        for line in out.stdout.splitlines():
            assert admin.execute_command(*shlex.split(line)) in (b"OK", "OK", True)
        admin.acl_log_reset()
        c = start_daemon(_confined(redis_url, keys[1], secrets, "c", False), name="c")
        tagged = fleet.submit("scan", {"task_id": 1, "duration": 10}, tag="scanner")
        pinned = fleet.submit("scan", {"task_id": 2, "duration": 60}, host="c")
        wait_for(lambda: {fleet.show(tagged).state, fleet.show(pinned).state} == {"running"})
        a, b = start_daemons(
            (_confined(redis_url, keys[1], secrets, "a", True), "a"),
            (_confined(redis_url, keys[1], secrets, "b", False), "b"),
        )
        wait_for(lambda: admin.get(REAPER) == b"a")
        c.stop(signal.SIGKILL)
        # Submitted to the dead host from the shell: lost, said so without "by ?", exit 4.
        out = pymgr(
            "fleet", "submit", "echo", "word=x", "--host", "c", "--key", "late", *_signing(redis_url, keys)
        )
        assert out.returncode == 4, out.stderr
        assert out.stdout == (
            f"job late: lost (marked by host a): host c had no heartbeat for {LEASE_S:g} s;"
            " the job was never delivered\n"
        )
        # The tag's job is claimed by b, no reaper, under its own user; the pinned one marked lost by a.
        info = fleet.wait(tagged, timeout_s=30)
        assert (info.state, info.received_by) == ("succeeded", "b"), info
        info = fleet.wait(pinned, timeout_s=30)
        assert (info.state, info.fields["reaped_by"]) == ("lost", "a"), info
        # Silent past forget_host_after_s with nothing pending: a drops c from the hosts, under its user.
        wait_for(lambda: [host.id for host in fleet.hosts()] == ["a", "b"])
        assert "host c was silent for" in a.log()
        assert admin.get(REAPER) == b"a"  # b never held it
        denied = [entry for entry in admin.acl_log() if entry["username"].startswith("fleet-host-")]
        assert denied == [] and "no permissions" not in a.log() + b.log()
        assert (
            "from c (no heartbeat" in b.log() and "reaper lock" not in b.log()
        )  # reaper = false: never tried
    with redis.Redis.from_url(redis_url, username="fleet-host-b", password="pw-fleet-host-b") as host_b:
        refused = [
            lambda: host_b.xack("fleet:host:c", GROUP, "0-1"),
            lambda: host_b.xrange("fleet:host:c"),
            lambda: host_b.eval(LOCK_SCRIPT, 1, REAPER, "b", 2000),
            lambda: host_b.xclaim("fleet:host:c", GROUP, "b", 0, ["0-1"]),
            lambda: host_b.srem("fleet:hosts", "a"),
            lambda: host_b.zadd("fleet:silent", {"a": 1}),
            lambda: host_b.xpending("fleet:ctl:a", GROUP),
        ]
        for command in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                command()
