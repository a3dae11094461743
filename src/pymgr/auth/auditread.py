"""Reading the audit log back: its records newest first, filtered, a bounded page at a time.

Rules:
- The files are read as the writer left them (``auditfile.py``): ``audit.log``
  then ``audit.log.1`` ... ``audit.log.N``, newest first, each line one
  record, already redacted. A line that is not a JSON object with a ``time``
  is skipped and counted (``skipped_lines``), never returned. A line longer
  than ``max_scan_bytes`` cannot fit in a page: it is counted apart
  (``too_large_lines``) and logged with its file and offset, never hidden.
  The config refuses a scan budget that a record within ``[limits]
  max_params_bytes`` could outgrow (``settings.AUDIT_LINE_OVERHEAD_BYTES``).
- Every file is opened (read-only, never through a symlink) before the scan
  starts, in the caller's thread; the scan may then run in another one: a
  rotation meanwhile renames files, and open descriptors do not move.
- A page holds at most ``limit`` records, and a scan reads at most
  ``max_scan_bytes`` of lines, counted as read (a line too large to keep
  counts every byte of it) (a rare filter may return fewer than ``limit``
  records, with a cursor to go on from); every request does bounded work.
  A full page reads on, within the same budget, for one more match: ``next``
  is None when nothing older matches, so a last page exactly full does not
  lead to an empty one.
- The cursor (``next``, given back as ``before``) is ``INODE-OFFSET``: the
  file by its inode, which a rotation's rename keeps, and the offset of the
  first line not read yet. A cursor whose file has been rotated away gives an
  empty last page. The scan stops at the first record older than ``since``
  (the files are in writing order; a wall clock stepped back can hide what
  was written before the step).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic_core
from typing_extensions import TypedDict

from pymgr.auth._policysyntax import Subject, parse_subject

__all__ = ["AuditQuery", "AuditReader", "OpenFile", "parse_cursor", "parse_time"]

log = logging.getLogger("pymgr.audit")

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
#: Bytes read from a file at a time, from its end backwards.
_BLOCK_BYTES = 64 * 1024
_CURSOR = re.compile(r"^([0-9]{1,20})-([0-9]{1,20})$")
#: Kinds a subject filter may have: those an audit line's identity carries.
_FILTER_KINDS = frozenset({"user", "uid", "group", "key", "cert", "role", "legacy"})


class AuditPage(TypedDict):
    """One page of ``audit.read`` (the result schema of ``GET /v1/audit``)."""

    #: The records as written, newest first (docs/security.md, "The audit log").
    records: list[dict[str, Any]]
    #: The next page's cursor (give it back as ``before``); None on the last page.
    next: str | None
    scanned_bytes: int
    skipped_lines: int
    #: Lines longer than ``[audit] read_max_scan_bytes``: records no page can hold (logged where they are).
    too_large_lines: int


@dataclass(frozen=True, slots=True)
class OpenFile:
    """One audit file, open: its descriptor, inode and size when opened, and its name (for the log)."""

    fd: int
    inode: int
    size: int
    path: Path | None = None


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """What to read: filters (None: any), a page's size and where to start."""

    limit: int
    since: str | None = None
    until: str | None = None
    subject: Subject | None = None
    action: str | None = None
    outcome: str | None = None
    before: tuple[int, int] | None = None


def parse_time(text: str) -> str:
    """An ISO 8601 time as the audit line writes it (UTC, milliseconds): lines compare as text then.

    Raises:
        ValueError: not an ISO 8601 time, or one outside years 1 to 9999 in UTC.
    """
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time, like 2026-01-31T12:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        utc = when.astimezone(UTC)
    except (
        OverflowError
    ):  # 0001-01-01T00:00+14:00 is before year 1 in UTC (and 9999-12-31T23:59-14:00 after 9999)
        raise ValueError(f"{text!r} is out of range once in UTC: between years 1 and 9999, please") from None
    # isoformat, not strftime: glibc's %Y writes year 1 as "1", which sorts after "2026" as text.
    return utc.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def parse_cursor(text: str) -> tuple[int, int]:
    """``INODE-OFFSET`` (a page's ``next``).

    Raises:
        ValueError: not of that form.
    """
    match = _CURSOR.fullmatch(text)
    if match is None:
        raise ValueError(f"{text[:80]!r} is not a cursor; give back a page's next as it came (INODE-OFFSET)")
    return int(match[1]), int(match[2])


def parse_filter_subject(text: str) -> Subject:
    """A subject to filter by: a policy subject an audit line can show (or a person, ``console:alice``).

    Raises:
        ValueError: malformed, or ``owner``/``any`` (which name no one in particular).
    """
    subject = parse_subject(text, namespaces=None)
    if subject.kind in ("owner", "any"):
        raise ValueError(f"subject {text!r} names no one in particular: filter by user:, uid:, key:, ...")
    return subject


class AuditReader:
    """The audit files of one daemon, read newest first.

    Args:
        path: the log (``[audit] path``); its rotations are ``path.1`` ... ``path.<backups>``.
        backups: how many rotations the writer keeps.
        max_scan_bytes: the most bytes of lines one page reads.
    """

    def __init__(self, path: Path, *, backups: int, max_scan_bytes: int) -> None:
        self.path = path
        self.backups = backups
        self.max_scan_bytes = max_scan_bytes

    def open(self) -> list[OpenFile]:
        """Every audit file there is, open, newest first (close them with ``close``)."""
        names = [
            self.path,
            *(self.path.with_name(f"{self.path.name}.{n}") for n in range(1, self.backups + 1)),
        ]
        files = []
        for name in names:
            try:
                fd = os.open(name, _OPEN_FLAGS)
            except FileNotFoundError:
                continue
            st = os.fstat(fd)
            files.append(OpenFile(fd, st.st_ino, st.st_size, name))
        return files

    @staticmethod
    def close(files: list[OpenFile]) -> None:
        for file in files:
            os.close(file.fd)

    def scan(self, files: list[OpenFile], query: AuditQuery) -> AuditPage:
        """One page: ``AuditPage`` (``next`` None: no more)."""
        page = _Page(query, self.max_scan_bytes)
        start = 0
        end: int | None = None
        if query.before is not None:
            inode, end = query.before
            start = next((i for i, f in enumerate(files) if f.inode == inode), len(files))
        for index in range(start, len(files)):
            file = files[index]
            top = file.size if end is None or index != start else min(end, file.size)
            for offset, size, line in _lines_backwards(file.fd, top, self.max_scan_bytes):
                if line is None:
                    log.warning(
                        "audit.read: the line at %s offset %d is %d bytes, more than [audit] read_max_scan_bytes=%d: "
                        "no page can hold it; it is counted in too_large_lines",
                        file.path,
                        offset,
                        size,
                        self.max_scan_bytes,
                    )
                here = f"{file.inode}-{offset}"
                if not page.take(size, line, here):
                    at_end = offset == 0 and index == len(files) - 1  # nothing is left to read
                    return page.reply(page.next_cursor(here, at_end))
        return page.reply(None)


class _Page:
    """The records of one page as the scan finds them, and when it must stop."""

    def __init__(self, query: AuditQuery, max_scan_bytes: int) -> None:
        self.query = query
        self.budget = max_scan_bytes
        self.records: list[dict[str, Any]] = []
        self.scanned = 0
        self.skipped = 0
        self.too_large = 0
        #: Nothing older can match (``since``): the page is the last.
        self.done = False
        #: Once the page is full: the cursor after its last record. The scan goes on for one more match,
        #: so that a last page exactly full has no cursor to an empty page.
        self.full_at: str | None = None
        #: A match past a full page was found: there is an older page.
        self.more = False

    def take(self, size: int, line: bytes | None, here: str) -> bool:
        """Look at one line of ``size`` bytes read (None: too large to keep) at cursor ``here``; False once
        a match is found past a full page, or out of budget, or past ``since``."""
        self.scanned += size
        record = _record(line)
        if line is None:
            self.too_large += 1
        elif record is None:
            self.skipped += 1
        else:
            when = record["time"]
            if self.query.since is not None and when < self.query.since:
                self.done = True
                return False
            if _matches(self.query, record):
                if self.full_at is not None:
                    self.more = True
                    return False
                self.records.append(record)
                if len(self.records) == self.query.limit:
                    self.full_at = here
        return self.scanned < self.budget

    def next_cursor(self, here: str, at_end: bool) -> str | None:
        """The next page's cursor once the scan stopped at ``here`` (None: nothing older matches)."""
        if self.more:
            return self.full_at
        if self.done or at_end:
            return None
        return self.full_at or here  # out of budget: what is older is not known

    def reply(self, next_cursor: str | None) -> AuditPage:
        return {
            "records": self.records,
            "next": next_cursor,
            "scanned_bytes": self.scanned,
            "skipped_lines": self.skipped,
            "too_large_lines": self.too_large,
        }


def _record(line: bytes | None) -> dict[str, Any] | None:
    if not line:
        return None
    try:
        record = pydantic_core.from_json(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("time"), str):
        return None
    return record


def _matches(query: AuditQuery, record: dict[str, Any]) -> bool:
    when = record["time"]
    if query.until is not None and when > query.until:
        return False
    if query.outcome is not None and record.get("outcome") != query.outcome:
        return False
    operation = record.get("operation")
    if query.action is not None and not (
        isinstance(operation, str) and fnmatch.fnmatchcase(operation, query.action)
    ):
        return False
    return query.subject is None or _is(query.subject, record)


def _is(subject: Subject, record: dict[str, Any]) -> bool:
    """Whether the line's caller is ``subject`` (a delegate's line is both the delegate's and the person's)."""
    identity = record.get("identity")
    if not isinstance(identity, dict):
        return False
    kind, value = subject.kind, subject.value
    if kind not in _FILTER_KINDS:  # a person, NAMESPACE:NAME
        return identity.get("person") == str(subject)
    if kind == "legacy":
        return record.get("transport") == "legacy"
    if kind in ("group", "role"):
        names = identity.get("groups" if kind == "group" else "roles")
        return isinstance(names, list) and value in names
    field = {"user": "user", "uid": "uid", "key": "key_id", "cert": "cert"}[kind]
    return identity.get(field) == value


def _lines_backwards(fd: int, end: int, max_line_bytes: int) -> Iterator[tuple[int, int, bytes | None]]:
    """The lines before ``end``, last first: the offset each starts at, its bytes read (its newline too) and
    the line (None: longer than the bound).

    A line that grows past ``max_line_bytes`` is not kept: it is yielded as None once its start is found,
    with every byte of it counted.
    """
    for start, line in _starts_backwards(fd, end, max_line_bytes):
        yield start, end - start, line
        end = start


def _starts_backwards(fd: int, end: int, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    position = end
    carry = b""
    oversize = False
    while position > 0:
        size = min(_BLOCK_BYTES, position)
        position -= size
        block = os.pread(fd, size, position) + carry
        pieces = block.split(b"\n")
        carry = pieces[0]
        offset = position + len(block)
        for piece in reversed(pieces[1:]):
            offset -= len(piece) + 1
            if piece or offset + 1 < end:
                yield offset + 1, (None if oversize or len(piece) > max_line_bytes else piece)
            oversize = False
        if len(carry) > max_line_bytes:
            oversize, carry = True, b""
    if carry or oversize:
        yield 0, (None if oversize or len(carry) > max_line_bytes else carry)
