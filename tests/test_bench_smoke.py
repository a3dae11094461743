"""Keeps the bench (bench/, `make bench`) from rotting. Nothing here is timed or compared.

The seed baseline's request handler runs over a socketpair (no gevent
needed), and one bench round runs with tiny counts against pymgr and the
two floors; supervisord and the seed server join only where they are
installed (the bench venv), so the test venv needs nothing extra.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path

import pytest

from bench import bench_console, bench_tasks, report, run, seed_server, task_history
from bench.figures import Settings
from bench.targets import legacy_request
from pymgr.tasks.states import TaskState
from pymgr.tasks.store import SqliteStore

SECRET = "bench-secret"


def _exchange(request: bytes) -> dict[str, object]:
    client, server = socket.socketpair()
    handler = threading.Thread(target=seed_server.make_handler(SECRET.encode()), args=(server, None))
    handler.start()
    with client:
        client.sendall(request)
        reply = b""
        while data := client.recv(4096):
            reply += data
    handler.join(5)
    return json.loads(reply)


def test_the_seed_handler_answers_like_the_2014_design() -> None:
    assert _exchange(legacy_request(SECRET)) == {"success": True, "msg": {"greeting": "hi"}}


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (legacy_request("wrong secret"), seed_server.ERR_NOT_AUTHENTICATED),
        (legacy_request(SECRET, action="nope"), seed_server.ERR_NO_ACTION),
        (legacy_request(SECRET, module="nope"), seed_server.ERR_NO_ACTION),
    ],
)
def test_the_seed_handler_refuses_with_the_2014_codes(request_bytes: bytes, code: int) -> None:
    assert _exchange(request_bytes) == {"success": False, "msg": {"err_code": code}}


def test_one_tiny_round_measures_every_figure_for_pymgr(capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(
        rounds=1, duration_s=0.1, clients=2, latency_requests=20, task_starts=1, idle_settle_s=0.0
    )
    document = run.bench_once(settings, warmup=False, baseline="HEAD")
    samples = document.pop("_samples")
    measured = {(s.figure, s.server) for s in samples}
    for figure in ("control", "newconn-legacy", "newconn-http", "latency", "task-start", "startup"):
        assert (figure, "pymgr") in measured
    assert ("control", "asgi floor") in measured and ("newconn-legacy", "line floor") in measured
    for figure in ("control", "newconn-legacy", "newconn-http", "latency"):
        assert (figure, "pymgr base") in measured, figure  # the A/B column of --baseline
    assert document["machine"]["cores"] and document["demo_config"]["modules"]
    for check in document["checks"]:
        if check["baseline"] is None:
            assert check["measured"] is not None, check["id"]
    table = report.table(samples)
    assert (
        table.startswith("| figure | metric | pymgr | pymgr at the baseline commit |")
        and "1. control calls" in table
    )
    assert "x pymgr base" in table
    json.dumps(document, default=str)  # what write_json writes


def test_the_seeded_history_is_what_the_daemon_reads(tmp_path: Path) -> None:
    task_history.seed(tmp_path / "state", 40)
    store = SqliteStore(tmp_path / "state" / "tasks.db", max_records=40)
    assert len(store) == 40 and not store.active()
    assert [r.id for r in store.list_runs(state=TaskState.FAILED, limit=2)] == [39, 38]
    assert [r.key for r in store.list_runs(type="backup", limit=2)] == ["site:35", "site:30"]
    store.close()
    assert task_history.link_next({"link": '</v1/tasks?before=7>; rel="next"'}) == "/v1/tasks?before=7"
    assert task_history.link_next({}) is None


def test_the_scale_table_checks_each_target() -> None:
    figures = {
        "history_records": 10_000,
        "history_p99_ms": 10.5,
        "history_worst_query": "deep page",
        "history_p99_by_query_ms": {"newest page": 3.0, "deep page": 10.5},
        "running": 1000,
        "threads": 4,
        "idle_threads": 4,
        "rss_kib_per_task": 12.0,
        "keeper_rss_kib_per_task": 30.0,
        "loaded_p99_ms": 5.0,
        "idle_p99_ms": 1.0,
        "writers": 100,
        "writers_p99_ms": 9.0,
        "writers_blocked": 0,
        "slowest_writer_mib_s": 0.95,
        "burst_ms": 150.0,
        "history_p50_by_query_ms": {"newest page": 1.0, "deep page": 2.0},
        "history_cpu_ms_by_query": {"newest page": 0.5, "deep page": 0.75},
        "keeper_cpu_share": 0.2,
    }
    text, oks = bench_tasks.table(figures)
    assert oks == [False, True, False, True, True, True, True, True]  # 12 + 30 KiB a run: over 20
    assert re.search(
        r"(?m)^GET /v1/tasks p99 \(ms\), 10,000 records\s+10\.50\s+-\s+-\s+<= 10 ms MISSED$", text
    )
    assert "; deep page 10.5 / 2.0 / 0.75; the figure is the worst p99, deep page)" in text
    assert re.search(r"(?m)^100 starts until all running \(ms\), median\s+150\.00\s+-\s+-\s+none$", text)


def test_the_console_bench_runs_a_real_daemon_and_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "--history",
        "60",
        "--requests",
        "3",
        "--streams",
        "3",
        "--rounds",
        "1",
        "--results",
        str(tmp_path),
    ]
    assert bench_console.main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"daemon event subscribers, 3 streams\s+1\.00\s+1\.00\s+1\.00\s+1 ok", out), out
    figures = json.loads((tmp_path / "console.json").read_text())["figures"]
    assert figures["streams"]["3"]["events"] >= 10 * 3  # every run's three states at least
    assert set(figures["tasks_page"]) == {"newest", "state=failed"}
