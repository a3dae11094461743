"""``pymgr fleet``: bad input and an unreachable or refusing Redis give a message and an exit code,
never a traceback; ``logs`` prints the progress lines unless ``--no-progress``, as ``pymgr tasks logs``.

Against a real Redis, with no fleet member: the jobs read here are written into Redis as a host writes them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import redis

from pymgr.cli._fleetshared import EXIT_NO_REDIS
from pymgr.fleet.keyspace import HOSTS, JOBS, heartbeat_key, job_key, output_key
from tests.conftest import PYMGR
from tests.fleet.conftest import KEY_ID

OUTPUT = [b"start\nPYMGR_PROGRESS 10 a", b"bout\nmiddle\n", b"PYMGR_PROGRESS 100\nend\n"]
WITHOUT = b"start\nmiddle\nend\n"


def pymgr(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(PYMGR), *argv], capture_output=True, timeout=60)


def said(out: subprocess.CompletedProcess[bytes]) -> str:
    """The one error line, checked to be all of stderr: no traceback."""
    err = out.stderr.decode()
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.fixture
def ended_job(redis_url: str) -> str:
    with redis.Redis.from_url(redis_url) as admin:
        admin.hset(job_key("j1"), mapping={"state": "succeeded", "received_by": "a", "progress": "1"})
        for offset, data in zip((0, 23, 35), OUTPUT, strict=True):
            admin.xadd(output_key("j1"), {"offset": offset, "data": data})
    return "j1"


@pytest.mark.parametrize("follow", [[], ["-f"]])
def test_logs_prints_progress_lines_unless_no_progress(
    redis_url: str, ended_job: str, follow: list[str]
) -> None:
    whole = b"".join(OUTPUT)
    assert pymgr("fleet", "logs", ended_job, *follow, "--redis", redis_url).stdout == whole
    assert pymgr("fleet", "logs", ended_job, *follow, "--progress", "--redis", redis_url).stdout == whole
    assert pymgr("fleet", "logs", ended_job, *follow, "--no-progress", "--redis", redis_url).stdout == WITHOUT


def test_logs_json_gives_the_entries_as_stored_and_refuses_no_progress(
    redis_url: str, ended_job: str
) -> None:
    out = pymgr("--json", "fleet", "logs", ended_job, "-f", "--redis", redis_url)
    assert [json.loads(line)["data"].encode() for line in out.stdout.splitlines()] == OUTPUT
    out = pymgr("--json", "fleet", "logs", ended_job, "--no-progress", "--redis", redis_url)
    assert out.returncode == 2
    assert said(out) == "error: --json prints the output's entries as stored; --no-progress goes without it"


@pytest.mark.parametrize("command", [["show"], ["logs"], ["logs", "-f"]])
def test_an_id_no_job_can_have_is_no_job(redis_url: str, ended_job: str, command: list[str]) -> None:
    # j1:out is the job's output stream: read as a job's hash it would be Redis's WRONGTYPE.
    out = pymgr("fleet", *command, f"{ended_job}:out", "--redis", redis_url)
    assert out.returncode == 1
    assert said(out) == "error: no fleet job 'j1:out': a job's id matches ^[A-Za-z0-9._-]{1,64}$"
    out = pymgr("fleet", *command, "j2", "--redis", redis_url)
    assert (out.returncode, said(out)) == (
        1,
        "error: no fleet job 'j2'; pymgr fleet list shows the recent ones",
    )


@pytest.mark.parametrize("command", [["list"], ["hosts"], ["show", "j1"], ["logs", "j1", "-f"]])
def test_a_redis_that_cannot_be_reached_is_exit_69(tmp_path: Path, command: list[str]) -> None:
    out = pymgr("fleet", *command, "--redis", f"unix://{tmp_path}/none.sock")
    assert out.returncode == EXIT_NO_REDIS == 69
    assert said(out).startswith(
        f"error: cannot reach Redis at unix://{tmp_path}/none.sock: Error 2 connecting"
    )


def test_a_wrong_password_is_exit_69_and_never_printed(redis_server: object, redis_url: str) -> None:
    socket = redis_url.removeprefix("unix://")
    out = pymgr("fleet", "list", "--redis", f"unix://nobody:hunter2@{socket}")
    assert out.returncode == EXIT_NO_REDIS
    assert (
        said(out)
        == f"error: cannot reach Redis at unix://{socket}: invalid username-password pair or user is disabled."
    )


def test_a_url_redis_cannot_read_is_a_usage_error() -> None:
    out = pymgr("fleet", "list", "--redis", "http://localhost:6379")
    assert out.returncode == 2
    assert said(out) == (
        "error: --redis http://localhost:6379: Redis URL must specify one of the following schemes "
        "(redis://, rediss://, unix://)"
    )


def test_a_refusal_of_redis_is_exit_1(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as admin:
        admin.set(JOBS, "not an index")
    out = pymgr("fleet", "list", "--redis", redis_url)
    assert out.returncode == 1
    assert said(out).startswith(f"error: Redis at {redis_url} refused: WRONGTYPE")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["name"], "error: expected name=value or name:=JSON, got 'name'"),
        (["n:=nope"], "error: parameter 'n': 'nope' is not JSON (Expecting value: line 1 column 1 (char 0))"),
        (
            ["n=1", "--key", "a:b"],
            "error: this job would be refused: the job id must match ^[A-Za-z0-9._-]{1,64}$",
        ),
        (["n=1", "--timeout", "nan"], "error: --timeout must be a number of seconds, not nan"),
        (["n=1", "--host", "b"], "error: give --host ID or --tag TAG (exactly one)"),
    ],
)
def test_bad_submissions_are_usage_errors_that_queue_nothing(
    redis_url: str, keys: tuple[Path, Path], args: list[str], error: str
) -> None:
    signing = ["--redis", redis_url, "--key-id", KEY_ID, "--signing-key", str(keys[0])]
    out = pymgr("fleet", "submit", "scan", *args, "--tag", "x", *signing)
    assert (out.returncode, said(out)) == (2, error)
    with redis.Redis.from_url(redis_url) as admin:
        assert admin.zcard(JOBS) == 0 and admin.keys("fleet:tag:*") == []


def test_stop_with_a_nan_timeout_sends_nothing(
    redis_url: str, ended_job: str, keys: tuple[Path, Path]
) -> None:
    signing = ["--redis", redis_url, "--key-id", KEY_ID, "--signing-key", str(keys[0])]
    out = pymgr("fleet", "stop", "j1", "--timeout", "nan", *signing)
    assert (out.returncode, said(out)) == (2, "error: --timeout must be a number of seconds, not nan")


def test_hosts_shows_a_heartbeat_it_cannot_read(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as admin:
        admin.sadd(HOSTS, "a", "b", "c")
        admin.set(heartbeat_key("a"), b"{not json")
        admin.set(heartbeat_key("b"), json.dumps({"tags": "gpu", "at": "soon", "running": float("nan")}))
        admin.set(heartbeat_key("c"), json.dumps({"tags": ["gpu"], "at": 1.5, "running": 2}))
    out = pymgr("--json", "fleet", "hosts", "--redis", redis_url)
    assert out.returncode == 0, out.stderr
    assert [
        (h["id"], h["alive"], h["tags"], h["last_seen"], h["running"]) for h in json.loads(out.stdout)
    ] == [
        ("a", True, [], None, None),
        ("b", True, [], None, None),
        ("c", True, ["gpu"], 1.5, 2),
    ]
