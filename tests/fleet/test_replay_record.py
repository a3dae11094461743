"""The record of action jobs called on a host (``fleet/replay.py``): claim, reopen, prune, bound, file checks."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from pymgr.fleet.replay import PRUNE_EVERY_S, ActionRecord, CallGuard, Claim, RecordError, RecordFull

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_job_is_claimed_once_and_the_claim_outlives_a_reopen(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "actions.sqlite3"
    record = ActionRecord(path, max_entries=10, clock=clock)
    assert record.claim("j1", NOW + 300) is True
    assert record.claim("j1", NOW + 300) is False
    assert record.claim("j2", NOW + 300) is True
    record.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = ActionRecord(path, max_entries=10, clock=clock)
    assert len(again) == 2
    assert again.claim("j1", NOW + 300) is False
    assert again.claim("j3", NOW + 300) is True
    again.close()


def test_rows_past_their_time_are_pruned_at_most_every_prune_interval(tmp_path: Path, clock: Clock) -> None:
    record = ActionRecord(tmp_path / "a.sqlite3", max_entries=10, clock=clock)
    record.claim("old", NOW + 5)
    record.claim("new", NOW + 3600)
    clock.now = NOW + 6  # "old" is past its time, but the last prune was less than PRUNE_EVERY_S ago
    record.claim("x", NOW + 3600)
    assert len(record) == 3
    clock.now = NOW + PRUNE_EVERY_S + 1
    record.claim("y", NOW + 3600)
    assert len(record) == 3  # "old" went, "y" came
    assert (
        record.claim("old", NOW + 3600) is True
    )  # forgotten: (a job this old is refused before it gets here)
    assert record.prune() == 0
    record.close()


def test_a_full_record_refuses_a_new_job_but_still_knows_its_own(tmp_path: Path, clock: Clock) -> None:
    record = ActionRecord(tmp_path / "a.sqlite3", max_entries=2, clock=clock)
    record.claim("j1", NOW + 100)
    record.claim("j2", NOW + 200)
    with pytest.raises(RecordFull, match=r"replay_max_entries \(2\).*raise \[fleet\] replay_max_entries"):
        record.claim("j3", NOW + 300)
    assert record.claim("j1", NOW + 100) is False  # full, a job in it is still not called again
    clock.now = NOW + 150  # j1 is past its time: a full record prunes at once, whatever the interval
    assert record.claim("j3", NOW + 300) is True
    assert len(record) == 2
    record.close()


def test_the_bound_counts_the_rows_found_at_reopen(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "a.sqlite3"
    first = ActionRecord(path, max_entries=5, clock=clock)
    for n in range(3):
        first.claim(f"j{n}", NOW + 300)
    first.close()
    second = ActionRecord(path, max_entries=3, clock=clock)
    with pytest.raises(RecordFull):
        second.claim("j9", NOW + 300)
    second.close()


def test_the_file_is_in_wal_mode_with_its_index_on_forget_at(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "a.sqlite3"
    ActionRecord(path, max_entries=5, clock=clock).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        plan = db.execute("EXPLAIN QUERY PLAN DELETE FROM called WHERE forget_at < 1").fetchall()
    assert "called_forget_at" in str(plan)


def test_a_link_or_a_file_sqlite_cannot_read_is_refused_naming_it(tmp_path: Path, clock: Clock) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    link = tmp_path / "link.sqlite3"
    os.symlink(target, link)
    with pytest.raises(RecordError, match=rf"fleet action jobs {link} cannot be opened"):
        ActionRecord(link, max_entries=5, clock=clock)
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database" * 100)
    garbage.chmod(0o600)
    with pytest.raises(RecordError, match=rf"{garbage} cannot be opened: file is not a database"):
        ActionRecord(garbage, max_entries=5, clock=clock)


async def test_claims_from_the_event_loop_run_off_it_one_at_a_time(tmp_path: Path, clock: Clock) -> None:
    guard = CallGuard(tmp_path / "a.sqlite3", max_entries=100, clock=clock)
    claims = await asyncio.gather(*(guard.claim(f"j{n % 10}", NOW + 300) for n in range(50)))
    assert claims.count(Claim.FIRST) == 10
    assert claims.count(Claim.CALLING) == 40  # each job's first claim is running in this process
    guard.ended("j1")
    assert await guard.claim("j1", NOW + 300) is Claim.CALLED
    guard.close()
    again = CallGuard(tmp_path / "a.sqlite3", max_entries=100, clock=clock)
    assert await again.claim("j2", NOW + 300) is Claim.CALLED  # called by an earlier process
    again.close()


async def test_a_full_record_raises_through_the_guard(tmp_path: Path, clock: Clock) -> None:
    guard = CallGuard(tmp_path / "b.sqlite3", max_entries=1, clock=clock)
    assert await guard.claim("a", NOW + 300) is Claim.FIRST
    with pytest.raises(RecordFull):
        await guard.claim("b", NOW + 300)
    guard.close()
