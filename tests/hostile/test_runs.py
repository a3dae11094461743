"""Attacks on runs: hijacking a queued run by its marker, and starting more runs than the daemon can bear.

Real daemons (the ``pymgr serve`` console script), real processes, real
``kill -9``, real sockets (the Unix socket and the legacy TCP listener).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import httpx

from examples.legacy_client import call
from pymgr.client import Client
from pymgr.keeper.proctree import MARKER_VAR, TASK_ID_VAR
from tests.conftest import BASE_CONFIG, LEGACY_SECRET, PYMGR, Daemon
from tests.tasks.survivalhelpers import reap_state_dir, states, stored_marker, wait_until

#: Runs are left running when the daemon stops; "hold" runs one at a time, so a second one stays queued.
HOLD_CONFIG = (
    BASE_CONFIG.replace("[tasks]\n", '[tasks]\non_shutdown = "leave"\n', 1)
    + """
[tasks.types.hold]
argv = ["/bin/sleep", "{seconds}"]
max_concurrent = 1

[tasks.types.hold.params]
seconds = { type = "int", default = 600, min = 1 }
"""
)

#: uid and gid of www-data on Debian: the web back end, the attacker of these tests.
WWW_DATA = 33


@pytest.fixture(autouse=True)
def reaped(tmp_path: Path) -> Iterator[None]:
    yield
    for db in tmp_path.glob("*/state/tasks.db"):
        reap_state_dir(db.parent)


def impostor(task_id: int, marker: str, *, uid: int | None = None) -> subprocess.Popen[bytes]:
    """``setsid env -i PYMGR_TASK_ID=<id> PYMGR_TASK_MARKER=<m> sleep 900``, as ``uid`` if given."""

    def drop() -> None:
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return subprocess.Popen(
        ["/bin/sleep", "900"],
        env={TASK_ID_VAR: str(task_id), MARKER_VAR: marker},
        start_new_session=True,
        preexec_fn=drop,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def replay_hijack(start_daemon: Callable[..., Daemon], *, uid: int | None) -> None:
    """The attack of the review: a queued run's marker in a stranger's process, kill -9, restart."""
    daemon = start_daemon(HOLD_CONFIG)
    with Client(socket=daemon.socket) as client:
        first = client.start_task("hold")
        queued = client.start_task("hold")
        wait_until(lambda: states(client)[first.id]["state"] == "running", "the first run")
        assert states(client)[queued.id]["state"] == "queued"
    fake = impostor(queued.id, stored_marker(daemon, queued.id), uid=uid)
    try:
        time.sleep(0.2)  # its environment is in /proc
        daemon.proc.kill()
        assert daemon.proc.wait(10) == -signal.SIGKILL
        daemon = start_daemon(HOLD_CONFIG, name=daemon.dir.name)
        with Client(socket=daemon.socket) as client:
            record = states(client)[queued.id]
            assert (record["state"], record["pid"]) == ("queued", None), record  # not the impostor's run
            client.stop_task(first.id)
            ran = wait_until(
                lambda: (r := states(client)[queued.id])["state"] == "running" and r, "its own spawn"
            )
            assert ran["pid"] != fake.pid
            assert fake.poll() is None  # a stranger's process is left alone, not adopted, not signalled
    finally:
        fake.kill()
        fake.wait()


def test_a_process_carrying_a_queued_runs_marker_is_not_adopted(start_daemon: Callable[..., Daemon]) -> None:
    replay_hijack(start_daemon, uid=None)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start the impostor as www-data (uid 33)")
def test_www_data_cannot_hijack_a_queued_root_run(start_daemon: Callable[..., Daemon]) -> None:
    replay_hijack(start_daemon, uid=WWW_DATA)


def test_the_marker_is_never_shown(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(
        HOLD_CONFIG.replace('log_level = "debug"', 'log_level = "debug"\n\n[audit]\npath = "audit.log"')
    )
    with Client(socket=daemon.socket) as client:
        events = client.events()
        first = client.start_task("hold")
        queued = client.start_task("hold")
        seen = [next(events) for _ in range(3)]
        results = [client.task(queued.id), first, queued, *client.tasks(), *seen]
        shown = [result.to_json() for result in results]
        cli = [
            subprocess.run(
                [str(PYMGR), "--socket", str(daemon.socket), *args],
                capture_output=True,
                text=True,
                timeout=30,
            )
            for args in (
                ["--json", "tasks", "list"],
                ["--json", "tasks", "show", str(queued.id)],
                ["tasks", "show", str(queued.id)],
                ["tasks", "list"],
            )
        ]
    markers = [stored_marker(daemon, first.id), stored_marker(daemon, queued.id)]
    texts = [json.dumps(shown), *(run.stdout + run.stderr for run in cli), daemon.log()]
    texts += [path.read_text(errors="replace") for path in daemon.dir.rglob("*.log")]
    for text in texts:
        assert not any(marker in text for marker in markers), text[:2000]
    assert all("marker" not in record for record in shown if isinstance(record, dict) and "type" in record)


# -- caps on active runs ------------------------------------------------------------------


def capped(max_active: int, per_caller: int, scan_ids: int = 32) -> str:
    caps = (
        f"max_active = {max_active}\nmax_active_per_caller = {per_caller}\nscan_max_task_ids = {scan_ids}\n"
    )
    return HOLD_CONFIG.replace("[tasks]\n", "[tasks]\n" + caps, 1)


def http_start(daemon: Daemon, type: str = "hold") -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://pymgr") as http:
        return http.post("/v1/tasks", json={"type": type, "params": {}})


def legacy(daemon: Daemon, action: str, task_ids: str) -> dict[str, object]:
    assert daemon.legacy_port is not None
    reply = call(
        "127.0.0.1", daemon.legacy_port, LEGACY_SECRET, "SCAN_MODULE", action, {"task_ids": task_ids}
    )
    return reply  # type: ignore[no-any-return]


def scans(daemon: Daemon) -> list[dict[str, object]]:
    with Client(socket=daemon.socket) as client:
        return [record.to_json() for record in client.tasks(type="scan")]


def test_the_cap_per_caller_refuses_with_409_naming_it_then_admits_again(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(capped(max_active=10, per_caller=2))
    first, second = http_start(daemon), http_start(daemon)
    assert (first.status_code, second.status_code) == (202, 202)  # at the cap: admitted
    refused = http_start(daemon)
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "conflict" and error["details"]["cap"] == "max_active_per_caller"
    assert "the cap per caller is 2 ([tasks] max_active_per_caller)" in error["message"]
    with Client(socket=daemon.socket) as client:
        assert len(client.tasks(type="hold")) == 2  # nothing stored for the refused start
        client.stop_task(first.json()["result"]["id"])
        wait_until(lambda: client.task(first.json()["result"]["id"]).state == "stopped", "stopped")
    assert http_start(daemon).status_code == 202  # one ended: room again


def test_the_daemons_cap_counts_every_caller(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(capped(max_active=3, per_caller=3))
    assert [http_start(daemon).status_code for _ in range(2)] == [202, 202]
    assert legacy(daemon, "start", "1") == {"success": True, "msg": "start ok"}  # another caller: 3 of 3
    reply = legacy(daemon, "start", "2")
    assert reply["success"] is False and reply["msg"]["err_code"] == 5  # type: ignore[index]
    refused = http_start(daemon)
    assert refused.status_code == 409 and refused.json()["error"]["details"] == {
        "cap": "max_active",
        "value": 3,
        "active": 3,
        "asked": 1,
    }
    assert "the daemon's cap is 3 ([tasks] max_active)" in refused.json()["error"]["message"]


def test_one_legacy_request_fits_the_caps_whole_or_starts_nothing(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(capped(max_active=10, per_caller=3))
    reply = legacy(daemon, "start", "1,2,3,4")
    assert reply["success"] is False and reply["msg"]["err_code"] == 5, reply  # type: ignore[index]
    assert scans(daemon) == []
    assert legacy(daemon, "start", "1,2,3") == {"success": True, "msg": "start ok"}
    assert legacy(daemon, "start", "1,2,3") == {
        "success": True,
        "msg": "start ok",
    }  # already active: no new run
    assert len(scans(daemon)) == 3


def test_ids_per_legacy_request_are_bounded_by_the_config(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(capped(max_active=10, per_caller=10, scan_ids=3))
    reply = legacy(daemon, "start", "1,2,3,4")
    assert reply["success"] is False and reply["msg"]["err_code"] == 4  # type: ignore[index]
    assert "at most 3 ids per request ([tasks] scan_max_task_ids), got 4" in str(reply["msg"])
    assert scans(daemon) == []
    assert legacy(daemon, "start", "1,2,3") == {"success": True, "msg": "start ok"}
    assert len(scans(daemon)) == 3


def test_the_reviews_100_ids_with_the_default_config_start_nothing(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(HOLD_CONFIG)
    reply = legacy(daemon, "start", ",".join(str(i) for i in range(100)))
    assert reply["success"] is False and reply["msg"]["err_code"] == 4, reply  # type: ignore[index]
    assert scans(daemon) == []


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
