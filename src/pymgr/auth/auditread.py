"""Reading the audit log back: its records newest first, filtered, a bounded page at a time.

Rules:
- The files are read as the writer left them (``auditfile.py``): ``audit.log``
  then ``audit.log.1`` ... ``audit.log.N``, newest first, each line one
  record, already redacted. A line that is not a JSON object with a ``time``
  is skipped and counted (``skipped_lines``), never returned.
- Every file is opened (read-only, never through a symlink) before the scan
  starts, in the caller's thread; the scan may then run in another one: a
  rotation meanwhile renames files, and open descriptors do not move.
- A page holds at most ``limit`` records, and a scan reads at most
  ``max_scan_bytes`` of lines (a rare filter may return fewer than ``limit``
  records, with a cursor to go on from); every request does bounded work.
- The cursor (``next``, given back as ``before``) is ``INODE-OFFSET``: the
  file by its inode, which a rotation's rename keeps, and the offset of the
  first line not read yet. A cursor whose file has been rotated away gives an
  empty last page. The scan stops at the first record older than ``since``
  (the files are in writing order; a wall clock stepped back can hide what
  was written before the step).
"""

from __future__ import annotations

import fnmatch
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


@dataclass(frozen=True, slots=True)
class OpenFile:
    """One audit file, open: its descriptor, inode and size when opened."""

    fd: int
    inode: int
    size: int


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
        ValueError: not an ISO 8601 time.
    """
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time, like 2026-01-31T12:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


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
            files.append(OpenFile(fd, st.st_ino, st.st_size))
        return files

    @staticmethod
    def close(files: list[OpenFile]) -> None:
        for file in files:
            os.close(file.fd)

    def scan(self, files: list[OpenFile], query: AuditQuery) -> AuditPage:
        """One page: ``{"records", "next", "scanned_bytes", "skipped_lines"}`` (``next`` None: no more)."""
        page = _Page(query, self.max_scan_bytes)
        start = 0
        end: int | None = None
        if query.before is not None:
            inode, end = query.before
            start = next((i for i, f in enumerate(files) if f.inode == inode), len(files))
        for index in range(start, len(files)):
            file = files[index]
            top = file.size if end is None or index != start else min(end, file.size)
            for offset, line in _lines_backwards(file.fd, top, self.max_scan_bytes):
                if not page.take(offset, line):
                    last = page.done or (offset == 0 and index == len(files) - 1)  # nothing is left to read
                    return page.reply(None if last else f"{file.inode}-{offset}")
        return page.reply(None)


class _Page:
    """The records of one page as the scan finds them, and when it must stop."""

    def __init__(self, query: AuditQuery, max_scan_bytes: int) -> None:
        self.query = query
        self.budget = max_scan_bytes
        self.records: list[dict[str, Any]] = []
        self.scanned = 0
        self.skipped = 0
        #: Nothing older can match (``since``): the page is the last.
        self.done = False

    def take(self, offset: int, line: bytes | None) -> bool:
        """Look at one line; False once the page is full, out of budget or past ``since``."""
        self.scanned += 1 + (len(line) if line is not None else 0)
        record = _record(line)
        if record is None:
            self.skipped += 1
        else:
            when = record["time"]
            if self.query.since is not None and when < self.query.since:
                self.done = True
                return False
            if _matches(self.query, record):
                self.records.append(record)
        return len(self.records) < self.query.limit and self.scanned < self.budget

    def reply(self, next_cursor: str | None) -> AuditPage:
        return {
            "records": self.records,
            "next": next_cursor,
            "scanned_bytes": self.scanned,
            "skipped_lines": self.skipped,
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


def _lines_backwards(fd: int, end: int, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """The lines before ``end``, last first, each with the offset it starts at (None: longer than the bound).

    A line that grows past ``max_line_bytes`` is not kept: it is yielded as None once its start is found.
    """
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
                yield offset + 1, (None if oversize else piece)
            oversize = False
        if len(carry) > max_line_bytes:
            oversize, carry = True, b""
    if carry or oversize:
        yield 0, (None if oversize else carry)
