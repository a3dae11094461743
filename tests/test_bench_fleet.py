"""Keeps the fleet bench (bench/bench_fleet.py) from rotting: tiny runs of pymgr, RQ and Celery on a real Redis.

Nothing here is timed or compared: a run proves that every system starts, takes
jobs and records the timestamps the figures come from. RQ and Celery are in the
bench extra (`make bench`), not in the test one: without them their run is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import bench_fleet
from bench.bench_fleet import Figures


def _figures(system: str, completed_per_s: float, p50_ms: float) -> Figures:
    return Figures(
        system=system,
        note="",
        jobs=10,
        failed=0,
        submitted_per_s=1000.0,
        completed_per_s=completed_per_s,
        p50_ms=p50_ms,
        p99_ms=p50_ms * 2,
        max_ms=p50_ms * 3,
        loaded_p50_ms=100.0,
        worker_cpu_ms=1.0,
        redis_cpu_ms=0.1,
        submit_cpu_ms=0.2,
    )


@pytest.mark.parametrize(
    ("ours", "rq", "holds"),
    [
        ((200.0, 4.0), (100.0, 5.0), True),
        ((199.0, 4.0), (100.0, 5.0), False),  # under 2x RQ's throughput
        ((300.0, 5.0), (100.0, 5.0), False),  # a p50 not lower than RQ's
    ],
)
def test_the_target_is_twice_rqs_throughput_and_a_lower_p50(
    ours: tuple[float, float], rq: tuple[float, float], holds: bool
) -> None:
    text, ok = bench_fleet.check([_figures("pymgr", *ours), _figures("RQ", *rq)])
    assert ok is holds
    assert ("holds" if holds else "MISSED") in text


def test_without_rq_the_target_is_not_checked() -> None:
    assert bench_fleet.check([_figures("pymgr", 200.0, 4.0)])[1] is None


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--jobs", "0"],
        ["--max-jobs", "0"],
        ["--latency-rate", "0"],
        ["--systems", "pymgr,sidekiq"],
    ):
        with pytest.raises(SystemExit):
            bench_fleet.parse(argv)
    assert "--systems takes pymgr,pymgr-action,rq,celery" in capsys.readouterr().err


def _tiny_run(tmp_path: Path, systems: str) -> dict[str, dict[str, float]]:
    results = tmp_path / "fleet.json"
    argv = ["--jobs", "6", "--warmup", "0", "--latency-jobs", "3", "--latency-rate", "50"]
    assert bench_fleet.main([*argv, "--systems", systems, "--results", str(results)]) == 0
    figures = {f["system"]: f for f in json.loads(results.read_text())["figures"]}
    for name, f in figures.items():
        assert f["failed"] == 0, name
        assert f["completed_per_s"] > 0 and 0 < f["p50_ms"] <= f["p99_ms"] <= f["max_ms"], name
        assert f["worker_cpu_ms"] > 0, name  # the workers' CPU is found (their children included)
    return figures


def test_a_tiny_run_measures_pymgrs_task_and_action_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert set(_tiny_run(tmp_path, "pymgr,pymgr-action")) == {"pymgr", "pymgr (action)"}
    out = capsys.readouterr().out
    assert "submitted/s" in out and "target: not checked (pymgr and RQ were not both measured)" in out


def test_a_tiny_run_measures_pymgr_rq_and_celery_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("rq", reason="RQ is in the bench extra (make bench), not in the test one")
    pytest.importorskip("celery", reason="Celery is in the bench extra (make bench), not in the test one")
    assert set(_tiny_run(tmp_path, "pymgr,rq,celery")) == {"pymgr", "RQ", "Celery"}
    assert "target: completed/s >= 2x RQ's" in capsys.readouterr().out
