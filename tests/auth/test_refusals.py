"""Refusals counted per source and window: exact counts, both sides of every limit, timer and shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from pymgr.auth.audit import AuditLog
from pymgr.auth.refusals import OTHER_SOURCES, RefusalTally

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def tally(tmp_path: Path, clock: Any = None, **limits: Any) -> RefusalTally:
    return RefusalTally(
        AuditLog(tmp_path / "refused.log", max_bytes=1 << 20, backups=1), clock=clock or Clock(), **limits
    )


def lines(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "refused.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_one_line_per_source_per_window_written_when_the_next_window_starts(tmp_path: Path) -> None:
    clock = Clock()
    t = tally(tmp_path, clock)
    for n in range(5):
        clock.now = T0 + n * 0.1
        t.add(
            "tcp:10.0.0.1",
            "tcp",
            "http POST /v1/modules/demo/echo",
            "unauthenticated" if n < 3 else "rate_limited",
        )
    t.add("uid:33", "unix", "demo.root_only", "forbidden")
    assert lines(tmp_path) == []  # the window is not over
    clock.now = T0 + 1.0
    t.add("uid:33", "unix", "demo.root_only", "forbidden")
    assert lines(tmp_path) == [
        {
            "time": "2023-11-14T22:13:20.000Z",
            "last": "2023-11-14T22:13:20.400Z",
            "refused": 5,
            "source": "tcp:10.0.0.1",
            "transport": "tcp",
            "codes": {"unauthenticated": 3, "rate_limited": 2},
            "operations": {"http POST /v1/modules/demo/echo": 5},
            "other_operations": 0,
        },
        {
            "time": "2023-11-14T22:13:20.400Z",
            "last": "2023-11-14T22:13:20.400Z",
            "refused": 1,
            "source": "uid:33",
            "transport": "unix",
            "codes": {"forbidden": 1},
            "operations": {"demo.root_only": 1},
            "other_operations": 0,
        },
    ]
    t.close()  # shutdown writes the window in progress
    assert lines(tmp_path)[-1]["time"] == "2023-11-14T22:13:21.000Z" and len(lines(tmp_path)) == 3


@pytest.mark.parametrize(("sources", "expected"), [(2, ["a", "b"]), (3, ["a", "b", OTHER_SOURCES])])
def test_max_sources_both_sides(tmp_path: Path, sources: int, expected: list[str]) -> None:
    t = tally(tmp_path, max_sources=2)
    for n in range(30):
        t.add("abc"[n % sources], "tcp", "x", "unauthenticated")
    t.flush()
    written = lines(tmp_path)
    assert [line["source"] for line in written] == expected
    assert sum(line["refused"] for line in written) == 30  # every refusal counted once


@pytest.mark.parametrize(("operations", "named", "others"), [(2, 2, 0), (3, 2, 10)])
def test_max_operations_both_sides(tmp_path: Path, operations: int, named: int, others: int) -> None:
    t = tally(tmp_path, max_operations=2)
    for n in range(30):
        t.add("a", "tcp", f"op{n % operations}", "forbidden")
    t.flush()
    [line] = lines(tmp_path)
    assert (len(line["operations"]), line["other_operations"], line["refused"]) == (named, others, 30)


@pytest.mark.parametrize(("persons", "named", "others"), [(2, 2, 0), (3, 2, 10)])
def test_a_delegates_refusals_name_its_persons_bounded_both_sides(
    tmp_path: Path, persons: int, named: int, others: int
) -> None:
    # The delegate may invent any number of names: the first max_operations are named, the rest counted.
    t = tally(tmp_path, max_operations=2)
    for n in range(30):
        t.add("uid:999", "unix", "demo.root_only", "forbidden", person=f"console:p{n % persons}")
    t.add("uid:999", "unix", "demo.root_only", "forbidden")  # its own call: no person
    t.add("uid:33", "unix", "demo.root_only", "forbidden")
    t.flush()
    delegate, other = lines(tmp_path)
    assert delegate["source"] == "uid:999" and delegate["refused"] == 31
    assert (len(delegate["persons"]), delegate["other_persons"]) == (named, others)
    assert sum(delegate["persons"].values()) + delegate["other_persons"] == 30
    assert "persons" not in other and "other_persons" not in other  # a caller that is no delegate: as before


def test_a_longer_window_counts_longer(tmp_path: Path) -> None:
    clock = Clock()
    t = tally(tmp_path, clock, window_s=60)
    for n in range(120):
        clock.now = T0 - (T0 % 60) + n * 0.5
        t.add("a", "tcp", "x", "forbidden")
    t.flush()
    assert [line["refused"] for line in lines(tmp_path)] == [120]


def test_limits_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"^refusal window_s, max_sources and max_operations must be positive"
    ):
        tally(tmp_path, window_s=0)
    with pytest.raises(ValueError):
        tally(tmp_path, max_sources=0)


async def test_a_timer_writes_the_window_when_no_later_refusal_comes(tmp_path: Path) -> None:
    t = RefusalTally(AuditLog(tmp_path / "refused.log", max_bytes=1 << 20, backups=1), window_s=0.2)
    t.add("a", "tcp", "x", "forbidden")
    await asyncio.sleep(0.6)
    assert [line["refused"] for line in lines(tmp_path)] == [1]
    t.close()


def test_a_line_that_cannot_be_written_is_logged_with_its_counts(tmp_path: Path, caplog: Any) -> None:
    t = RefusalTally(
        AuditLog(tmp_path / "missing" / "refused.log", max_bytes=1 << 20, backups=1), clock=Clock()
    )
    t.add("uid:33", "unix", "demo.root_only", "forbidden")
    with caplog.at_level(logging.ERROR, logger="pymgr.audit"):
        t.flush()
    assert (
        "AUDIT LOG WRITE FAILED for refusals" in caplog.text
        and '"refused":1,"source":"uid:33"' in caplog.text
    )
