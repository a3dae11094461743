"""Reading the audit files back: newest first, across rotations, bounded, with a cursor a rotation keeps."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from pymgr.auth.audit import AuditLog
from pymgr.auth.auditread import AuditQuery, AuditReader, parse_cursor, parse_filter_subject, parse_time


def line(n: int, **fields: Any) -> bytes:
    record = {
        "time": f"2026-01-01T00:00:{n % 60:02d}.{n // 60:03d}Z",
        "transport": "unix",
        "identity": {"uid": 33, "user": "www-data", "groups": ["www-data"]},
        "operation": "demo.echo",
        "params": {"n": n},
        "outcome": "ok",
        **fields,
    }
    return (json.dumps(record) + "\n").encode()


def write(path: Path, lines: list[bytes], max_bytes: int = 1024, backups: int = 20) -> AuditLog:
    log = AuditLog(path, max_bytes=max_bytes, backups=backups)
    for text in lines:
        log.write_line(text)
    return log


def read(reader: AuditReader, query: AuditQuery) -> dict[str, Any]:
    files = reader.open()
    try:
        return reader.scan(files, query)
    finally:
        reader.close(files)


def walk(reader: AuditReader, **filters: Any) -> tuple[list[int], int]:
    """Every page's ``n``s in order, and how many pages it took."""
    seen, pages, before = [], 0, None
    while True:
        page = read(reader, AuditQuery(before=before, **filters))
        pages += 1
        seen += [record["params"]["n"] for record in page["records"]]
        if page["next"] is None:
            return seen, pages
        before = parse_cursor(page["next"])


def test_pages_walk_every_record_newest_first_across_rotations(tmp_path: Path) -> None:
    write(tmp_path / "audit.log", [line(n) for n in range(50)])
    assert len(list(tmp_path.glob("audit.log.*"))) >= 5
    reader = AuditReader(tmp_path / "audit.log", backups=20, max_scan_bytes=1 << 20)
    seen, pages = walk(reader, limit=7)
    assert seen == list(range(49, -1, -1)) and pages == 8


def test_a_cursor_survives_a_rotation_between_pages(tmp_path: Path) -> None:
    log = write(tmp_path / "audit.log", [line(n) for n in range(20)])
    reader = AuditReader(tmp_path / "audit.log", backups=20, max_scan_bytes=1 << 20)
    first = read(reader, AuditQuery(limit=3))
    for n in range(20, 40):  # the file the cursor names is renamed, more than once
        log.write_line(line(n))
    second = read(reader, AuditQuery(limit=3, before=parse_cursor(first["next"])))
    assert [r["params"]["n"] for r in first["records"] + second["records"]] == [19, 18, 17, 16, 15, 14]


def test_a_scan_reads_at_most_its_budget_and_pages_on(tmp_path: Path) -> None:
    write(tmp_path / "audit.log", [line(n) for n in range(30)], max_bytes=1 << 20)
    size = len(line(0))
    reader = AuditReader(tmp_path / "audit.log", backups=0, max_scan_bytes=5 * size)
    page = read(reader, AuditQuery(limit=100, outcome="error"))  # matches nothing: only the budget stops it
    assert page["records"] == [] and page["next"] is not None
    assert 5 * size <= page["scanned_bytes"] < 6 * size
    seen, pages = walk(reader, limit=100)
    assert seen == list(range(29, -1, -1)) and pages == 6


def test_a_last_page_exactly_full_has_no_cursor_to_an_empty_page(tmp_path: Path) -> None:
    lines = [line(n, outcome="error" if 10 <= n < 20 else "ok") for n in range(40)]
    write(tmp_path / "audit.log", lines)  # across rotations: older files with nothing that matches
    reader = AuditReader(tmp_path / "audit.log", backups=20, max_scan_bytes=1 << 20)
    assert walk(reader, limit=10, outcome="error") == (list(range(19, 9, -1)), 1)
    assert walk(reader, limit=5, outcome="error") == (list(range(19, 9, -1)), 2)  # each page's last match
    assert walk(reader, limit=20) == (list(range(39, -1, -1)), 2)


def test_filters(tmp_path: Path) -> None:
    alice = {"uid": 999, "user": "pymgr-console", "person": "console:alice", "roles": ["operators"]}
    lines = [
        line(0),
        line(1, identity=alice),
        line(2, outcome="error", operation="tasks.start:scan"),
        line(3, transport="tcp", identity={"key_id": "ci"}),
        line(4, transport="legacy", identity={"peer": "127.0.0.1:4"}),
    ]
    write(tmp_path / "audit.log", lines, max_bytes=1 << 20)
    reader = AuditReader(tmp_path / "audit.log", backups=0, max_scan_bytes=1 << 20)
    cases = {
        "console:alice": [1],
        "role:operators": [1],
        "user:pymgr-console": [1],  # the delegate's calls include those for its people
        "uid:33": [2, 0],
        "group:www-data": [2, 0],
        "key:ci": [3],
        "legacy": [4],
        "cert:x": [],
    }
    for subject, expected in cases.items():
        assert walk(reader, limit=10, subject=parse_filter_subject(subject))[0] == expected, subject
    assert walk(reader, limit=10, outcome="error")[0] == [2]
    assert walk(reader, limit=10, action="tasks.start:*")[0] == [2]
    assert walk(reader, limit=10, since=parse_time("2026-01-01T00:00:02Z"))[0] == [4, 3, 2]
    assert walk(reader, limit=10, until=parse_time("2026-01-01T01:00:01+01:00"))[0] == [1, 0]


def test_unreadable_and_oversized_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(
        line(0) + b"not json\n" + b'{"no":"time"}\n' + b"[1]\n" + b'"x' + b"y" * 5000 + b'"\n' + line(1)
    )
    reader = AuditReader(path, backups=0, max_scan_bytes=4096)
    pages = [read(reader, AuditQuery(limit=10))]
    while pages[-1]["next"] is not None:
        pages.append(read(reader, AuditQuery(limit=10, before=parse_cursor(pages[-1]["next"]))))
    assert [r["params"]["n"] for page in pages for r in page["records"]] == [1, 0]
    # Every byte is counted as read, the too-large line's 5003 too; it is counted apart, not as skipped.
    assert sum(page["scanned_bytes"] for page in pages) == path.stat().st_size
    assert sum(page["skipped_lines"] for page in pages) == 3
    assert sum(page["too_large_lines"] for page in pages) == 1


def test_a_line_too_large_for_a_page_is_counted_whole_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.log"
    big = line(1, params={"pad": "x" * 10_000})
    path.write_bytes(line(0) + big + line(2))
    reader = AuditReader(path, backups=0, max_scan_bytes=4096)
    with caplog.at_level(logging.WARNING, logger="pymgr.audit"):
        first = read(reader, AuditQuery(limit=10))
    # The budget is spent by the line: the page stops after it (it used to count 1 byte and read on).
    assert [r["params"]["n"] for r in first["records"]] == [2]
    assert first["scanned_bytes"] == len(line(2)) + len(big) and first["too_large_lines"] == 1
    assert first["next"] == f"{path.stat().st_ino}-{len(line(0))}"
    [message] = [r.getMessage() for r in caplog.records]
    assert message == (
        f"audit.read: the line at {path} offset {len(line(0))} is {len(big)} bytes, more than [audit] "
        "read_max_scan_bytes=4096: no page can hold it; it is counted in too_large_lines"
    )
    rest = read(reader, AuditQuery(limit=10, before=parse_cursor(first["next"])))
    assert [r["params"]["n"] for r in rest["records"]] == [0] and rest["next"] is None


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("2026-01-31T12:00:00Z", "2026-01-31T12:00:00.000Z"),
        ("2026-01-31T12:00:00.5+02:00", "2026-01-31T10:00:00.500Z"),
        ("2026-01-31", "2026-01-31T00:00:00.000Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),  # the ends of the range, just inside
        ("0001-01-01T00:00:00-01:00", "0001-01-01T01:00:00.000Z"),
        ("9999-12-31T23:59:59.999+01:00", "9999-12-31T22:59:59.999Z"),
    ],
)
def test_times_compare_as_the_log_writes_them(text: str, shown: str) -> None:
    assert parse_time(text) == shown


@pytest.mark.parametrize(
    ("call", "text", "message"),
    [
        (parse_time, "yesterday", r"^'yesterday' is not an ISO 8601 time"),
        (
            parse_time,
            "0001-01-01T00:00:00+14:00",
            r"^'0001-01-01T00:00:00\+14:00' is out of range once in UTC",
        ),
        (parse_time, "0001-01-01T00:59:59+01:00", r"is out of range once in UTC: between years 1 and 9999"),
        (parse_time, "9999-12-31T23:59:59-14:00", r"is out of range once in UTC"),
        (parse_cursor, "12", r"^'12' is not a cursor"),
        (parse_cursor, "1-2-3", r"is not a cursor"),
        (parse_filter_subject, "owner", r"names no one in particular"),
        (parse_filter_subject, "usr x", r"unknown subject"),
    ],
)
def test_bad_filters_say_what_to_write(call: Any, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(text)
