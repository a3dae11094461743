"""``pymgr fleet``: the console script against a real Redis and a real fleet member."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from pymgr.fleet.client import FleetClient
from pymgr.fleet.keyspace import HOSTS, job_key
from pymgr.fleet.keys import load_private_key
from tests.conftest import PYMGR, Daemon, wait_for
from tests.fleet.conftest import KEY_ID


def pymgr(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PYMGR), *argv], capture_output=True, text=True, timeout=120, env=env)


def test_keygen_submit_show_and_hosts(
    start_host: Callable[..., Daemon], redis_url: str, tmp_path: Path
) -> None:
    out = pymgr("fleet", "keygen", "ops", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "ops.key").stat().st_mode & 0o777 == 0o600
    assert pymgr("fleet", "keygen", "ops", "--dir", str(tmp_path)).returncode == 1  # never overwritten
    host = start_host("a", ("scanner",))
    signing = [
        "--redis",
        redis_url,
        "--key-id",
        KEY_ID,
        "--signing-key",
        str(host.dir.parent / "keys" / "console.key"),
    ]
    out = pymgr("--json", "fleet", "submit", "echo", "word=from-cli", "--tag", "scanner", "--wait", *signing)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert (job["state"], job["received_by"], job["exit_code"]) == ("succeeded", "a", 0)
    out = pymgr("fleet", "show", job["id"], "--config", str(host.dir / "pymgr.toml"))
    assert out.returncode == 0, out.stderr
    assert "received_by: a\n" in out.stdout and "state: succeeded\n" in out.stdout
    assert f"run: {job['task_id']} on a\n" in out.stdout and "task_id" not in out.stdout
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(job["fields"]["ended_at"])))
    assert f"ended_at: {when}\n" in out.stdout and "exit_code: 0\n" in out.stdout
    out = pymgr("--json", "fleet", "show", job["id"], "--redis", redis_url)
    assert json.loads(out.stdout)["submitted_at"] == job["submitted_at"]  # numbers in --json
    out = pymgr("--json", "fleet", "hosts", "--redis", redis_url)
    [entry] = json.loads(out.stdout)
    assert (entry["id"], entry["tags"], entry["alive"]) == ("a", ["scanner"], True)
    out = pymgr("fleet", "hosts", "--redis", redis_url)
    assert re.fullmatch(r"a\talive\ttags=scanner\trunning=0\tlast_heartbeat=\d+s ago\n", out.stdout)


def test_show_leaves_out_empty_fields_and_hosts_says_an_expired_heartbeat(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as admin:
        admin.hset(job_key("j"), mapping={"state": "stopped", "exit_code": "", "ended_at": "soon"})
        admin.sadd(HOSTS, "gone")  # a host whose heartbeat has expired
    out = pymgr("fleet", "show", "j", "--redis", redis_url)
    assert out.stdout == "ended_at: soon\nstate: stopped\n"  # a time that is not one: as the hash has it
    out = pymgr("fleet", "hosts", "--redis", redis_url)
    assert out.stdout == "gone\tsilent\ttags=-\trunning=-\tlast_heartbeat=expired\n"
    out = pymgr("fleet", "list", "--redis", redis_url)
    assert out.stdout == "no job yet\n"
    out = pymgr("fleet", "list", "--redis", redis_url, "--state", "failed")
    assert out.stdout == "no job matches (the index keeps the newest jobs only)\n"


def test_submit_says_what_is_wrong(start_host: Callable[..., Daemon], redis_url: str, tmp_path: Path) -> None:
    pymgr("fleet", "keygen", KEY_ID, "--dir", str(tmp_path))
    signing = ["--redis", redis_url, "--key-id", KEY_ID, "--signing-key", str(tmp_path / f"{KEY_ID}.key")]
    out = pymgr("fleet", "submit", "echo", "word=x", *signing)
    assert (out.returncode, out.stderr) == (2, "error: give --host ID or --tag TAG (exactly one)\n")
    out = pymgr("fleet", "submit", "echo", "--host", "a", "--redis", redis_url)
    assert out.returncode == 2 and "submitting needs --key-id ID and --signing-key FILE" in out.stderr
    out = pymgr("fleet", "submit", "echo", "word=x", "--host", "nobody", "--timeout", "0.5", *signing)
    assert (
        out.returncode == 3
        and "was not taken within 0.5 s (state: queued); the job stays queued" in out.stderr
    )
    (tmp_path / f"{KEY_ID}.key").chmod(0o644)
    out = pymgr("fleet", "submit", "echo", "--host", "a", *signing)
    assert out.returncode == 1 and "others may read it; run chmod 600" in out.stderr
    out = pymgr("fleet", "show", "nope", "--redis", redis_url)
    assert out.returncode == 1 and "no fleet job 'nope'" in out.stderr


def test_submit_exits_4_on_a_job_cancelled_before_any_host_took_it(
    redis_url: str, keys: tuple[Path, Path]
) -> None:
    signing = ["--redis", redis_url, "--key-id", KEY_ID, "--signing-key", str(keys[0])]
    argv = [str(PYMGR), "fleet", "submit", "echo", "word=x", "--host", "nobody", "--key", "k1", *signing]
    submitting = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with FleetClient(redis_url, key_id=KEY_ID, signing_key=load_private_key(keys[0])) as fleet:
        wait_for(lambda: _queued(fleet, "k1"))
        assert fleet.stop("k1").how == "cancelled"
    out, err = submitting.communicate(timeout=60)
    assert (submitting.returncode, out) == (4, "job k1: cancelled\n"), err


def _queued(fleet: FleetClient, job_id: str) -> bool:
    try:
        return fleet.show(job_id).state == "queued"
    except LookupError:
        return False
