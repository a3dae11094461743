"""Reading a run's log by logical offset, following it, deleting it (the daemon's side).

Rules:
- The keeper writes the files (``keeper.runlog``: ``<id>.log`` and rotated
  ``<id>.log.<offset>``); this module only reads and deletes them. A
  logical offset counts every byte the run's log ever held, so it stays
  valid across rotations: byte N is byte N, whichever file holds it now.
- File names are made from the integer id only, never from caller input,
  and every path is resolved and checked to be inside the logs directory
  (a symlinked logs directory or file is refused, not followed out).
- ``read`` answers the bytes at [offset, offset + limit). A negative
  offset, or one past the end, is ``ParamsInvalid`` saying what is valid;
  so is an offset whose bytes were rotated away, naming the first offset
  still kept (``details.start``).
- The keeper may rotate while a read is in progress: a read that sees the
  files change under it starts over (rotated files never change, so the
  second look is consistent), up to ``_RETRIES`` times; a log that rotates
  faster than that is ``Unavailable`` (503: retry), never a wrong answer.
- ``follow`` yields new bytes until the run has ended and its last bytes
  were read; it polls the file size every ``poll_s`` (no inotify in the
  standard library; the cost is one ``stat`` per follower per poll). It
  stops early, without an error, when the bytes it was about to read were
  rotated away under it: the caller's next read says so.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path

from pymgr.errors import ParamsInvalid, PymgrInternalError, Unavailable

#: Bytes handed out per chunk of a followed log.
FOLLOW_CHUNK_BYTES = 64 * 1024

#: Times a read starts over when files rotate under it before giving up. A run spewing output into
#: small files rotates every ~100 µs while the keeper drains it (a rotated file lives log_keep
#: rotations), about as long as one look takes: 5 tries lost that race in CI; 50 bound the time
#: spent to a few milliseconds in that worst case and do not lose it.
_RETRIES = 50


@dataclass(frozen=True, slots=True)
class LogSpan:
    """Which logical offsets a run's log holds now: [start, end)."""

    start: int
    end: int


def _rotating(task_id: int) -> Unavailable:
    return Unavailable(
        f"the log of task {task_id} rotates faster than it can be read (its type's log_max_bytes is small "
        "for this much output); retry, or raise log_max_bytes",
        details={"id": task_id},
    )


class LogReader:
    """The logs directory, read by logical offset (see the module rules)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._real = directory.resolve()

    def _checked(self, name: str) -> Path:
        path = (self.directory / name).resolve()
        if path.parent != self._real:
            raise PymgrInternalError(f"log path {path} escapes the logs directory {self._real}")
        return path

    def _segments(self, task_id: int) -> list[tuple[int, Path]]:
        """(first offset, path) of every file, oldest first; the current file last."""
        prefix = f"{int(task_id)}.log."
        bases = sorted(
            int(name[len(prefix) :]) for name in os.listdir(self._real) if _is_rotated(name, prefix)
        )
        segments = [(base, self._checked(f"{prefix}{base}")) for base in bases]
        current_base = 0
        if segments:
            newest_base, newest = segments[-1]
            try:
                current_base = newest_base + newest.stat().st_size
            except FileNotFoundError:
                raise _Rotated() from None
        return [*segments, (current_base, self._checked(f"{int(task_id)}.log"))]

    def span(self, task_id: int) -> LogSpan:
        """The offsets the log holds now (0, 0 for a run that wrote nothing or has no log yet)."""
        for _ in range(_RETRIES):
            try:
                segments = self._segments(task_id)
                base, current = segments[-1]
                size = current.stat().st_size if current.exists() else 0
                return LogSpan(segments[0][0], base + size)
            except _Rotated:
                continue
        raise _rotating(task_id)

    def read(self, task_id: int, offset: int, limit: int) -> tuple[bytes, LogSpan]:
        """Up to ``limit`` bytes from logical ``offset``, and the span they were read from.

        Raises:
            ParamsInvalid: ``offset`` is negative, past the end, or rotated away.
        """
        if offset < 0:
            raise ParamsInvalid(f"offset: must be >= 0, not {offset}", details={"offset": offset})
        for _ in range(_RETRIES):
            try:
                span = self.span(task_id)
                _check_offset(task_id, offset, span)
                return self._read_at(task_id, offset, limit), span
            except _Rotated:
                continue
        raise _rotating(task_id)

    def _read_at(self, task_id: int, offset: int, limit: int) -> bytes:
        chunks: list[bytes] = []
        wanted = limit
        segments = self._segments(task_id)
        for index, (base, path) in enumerate(segments):
            following = segments[index + 1][0] if index + 1 < len(segments) else None
            if wanted <= 0 or (following is not None and following <= offset):
                continue
            try:
                with open(path, "rb") as f:
                    f.seek(offset - base)
                    data = f.read(wanted)
            except FileNotFoundError:
                if index + 1 < len(segments):
                    raise _Rotated() from None
                data = b""  # no current file yet: nothing written
            chunks.append(data)
            offset += len(data)
            wanted -= len(data)
        if self._segments(task_id)[-1][0] != segments[-1][0]:
            raise _Rotated()  # the current file was rotated while we read it
        return b"".join(chunks)

    def starts_line(self, task_id: int, offset: int) -> bool:
        """Whether byte ``offset`` starts a line (True when the byte before was rotated away: unknowable)."""
        if offset <= 0:
            return True
        try:
            before, _ = self.read(task_id, offset - 1, 1)
        except ParamsInvalid:
            return True
        return before == b"\n"

    async def follow(
        self, task_id: int, offset: int, *, running: Callable[[], bool], poll_s: float
    ) -> AsyncGenerator[bytes]:
        """New bytes from ``offset`` on, until the run ended and everything was read.

        Raises:
            ParamsInvalid: the first read's offset is bad (see ``read``).
        """
        first = True
        while True:
            still_running = running()  # checked before reading: output is complete once it ended
            try:
                data, _ = self.read(task_id, offset, FOLLOW_CHUNK_BYTES)
            except ParamsInvalid:
                if first:
                    raise
                return  # rotated away under a slow follower: its next request says so
            first = False
            if data:
                offset += len(data)
                yield data
            elif not still_running:
                return
            else:
                await asyncio.sleep(poll_s)

    def remove(self, task_id: int) -> None:
        """Delete every file of a run's log (retention)."""
        prefix = f"{int(task_id)}.log."
        for name in os.listdir(self._real):
            if name == f"{int(task_id)}.log" or _is_rotated(name, prefix):
                try:
                    self._checked(name).unlink()
                except FileNotFoundError:
                    pass  # gone already


class _Rotated(Exception):
    """The files changed under a read; it starts over."""


def _is_rotated(name: str, prefix: str) -> bool:
    return name.startswith(prefix) and name[len(prefix) :].isdigit()


def _check_offset(task_id: int, offset: int, span: LogSpan) -> None:
    if offset > span.end:
        raise ParamsInvalid(
            f"offset {offset} is past the end of task {task_id}'s log ({span.end} bytes)",
            details={"offset": offset, "start": span.start, "end": span.end},
        )
    if offset < span.start:
        raise ParamsInvalid(
            f"offset {offset} of task {task_id}'s log was rotated away: "
            f"the log now starts at offset {span.start}",
            details={"offset": offset, "start": span.start, "end": span.end},
        )


def first_free_id(directory: Path) -> int:
    """One past the highest ``<id>.log`` in the logs directory: a new store never reuses a log's id."""
    highest = 0
    for entry in os.scandir(directory):
        stem, dot, ext = entry.name.partition(".")
        if dot and ext == "log" and stem.isdigit():
            highest = max(highest, int(stem))
    return highest + 1
