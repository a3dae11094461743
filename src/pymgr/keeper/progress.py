"""Progress lines in a run's output: ``PYMGR_PROGRESS <percent> [message]`` (pure, no I/O).

Rules:
- A progress line is a whole output line (stdout or stderr) that matches
  ``PROGRESS_LINE``: the word, one or more spaces or tabs, a percentage
  from 0 to 100 (digits, optionally a fraction), then optionally spaces and
  a message. A trailing ``\\r`` is ignored. Anything else, including a
  percentage over 100, is just output. Every line stays in the log.
- The message is decoded as UTF-8 (bad bytes replaced), stripped, and cut
  to ``MAX_MESSAGE_CHARS``; an empty one is None.
- ``ProgressScanner.feed`` takes output in chunks of any size and returns
  the last progress line completed in that chunk (callers want the latest
  only). Its cost is a C-level search for the word per chunk, so a task
  writing 100 MB/s of ordinary output costs almost nothing here; at most
  ``MAX_LINE_BYTES`` of one unfinished candidate line is held.
- ``ProgressLineFilter`` removes the progress lines from output read in
  chunks (a log read with ``progress=false``), by the same rule: a whole
  line that ``parse_line`` takes goes, with its newline; an unfinished
  last line is held only while it may still become one (at most
  ``MAX_LINE_BYTES``), and ``flush`` hands it back as it is.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import re
from typing import Final

#: The word that starts a progress line.
WORD: Final = b"PYMGR_PROGRESS"

#: A whole progress line, without its newline.
PROGRESS_LINE: Final = re.compile(
    rb"PYMGR_PROGRESS[ \t]+(\d{1,3}(?:\.\d{1,6})?)(?:[ \t]+([^\r\n]*?))?[ \t]*\r?"
)

#: Longest progress line looked at; a longer line is output only. Long
#: enough for any sensible message, short enough to bound what is held.
MAX_LINE_BYTES: Final = 4096

#: Longest message kept: what fits in a status line of a web page.
MAX_MESSAGE_CHARS: Final = 200

#: A line that starts with the word: the ones ``ProgressLineFilter`` looks at.
_CANDIDATE_LINE: Final = re.compile(rb"^(PYMGR_PROGRESS[^\n]*)\n", re.MULTILINE)

#: A progress report: the percentage and the message (or None).
Progress = tuple[float, str | None]


def parse_line(line: bytes) -> Progress | None:
    """The progress in one line (no newline), or None if it is not a progress line."""
    match = PROGRESS_LINE.fullmatch(line)
    if match is None:
        return None
    percent = float(match.group(1))
    if percent > 100:
        return None
    raw = match.group(2)
    message = raw.decode("utf-8", "replace").strip()[:MAX_MESSAGE_CHARS] if raw else ""
    return percent, message or None


class ProgressScanner:
    """Finds progress lines in a stream of output chunks (see the module rules)."""

    def __init__(self) -> None:
        #: The unfinished last line, held only while it may be a progress line.
        self._held: bytes | None = None
        #: The next byte starts a line.
        self._at_line_start = True

    def feed(self, data: bytes) -> Progress | None:
        """Scan one chunk; returns the last progress line completed in it, or None."""
        if not data:
            return None
        at_start = self._at_line_start
        if self._held is not None:
            data, at_start = self._held + data, True
            self._held = None
        latest = None
        i = data.find(WORD)
        while i >= 0:
            if (i == 0 and at_start) or (i > 0 and data[i - 1] == 0x0A):
                end = data.find(b"\n", i)
                if end < 0:
                    if len(data) - i <= MAX_LINE_BYTES:
                        self._held = data[i:]
                    break
                latest = parse_line(data[i:end]) or latest
                i = data.find(WORD, end + 1)
            else:
                i = data.find(WORD, i + 1)
        last_newline = data.rfind(b"\n")
        tail = data[last_newline + 1 :]
        tail_at_start = last_newline >= 0 or at_start
        if self._held is None and tail and tail_at_start and WORD.startswith(tail):
            self._held = tail  # the word itself may be cut by the chunk boundary
        self._at_line_start = not tail and tail_at_start
        return latest


class ProgressLineFilter:
    """Output without its progress lines, chunk by chunk (see the module rules).

    Args:
        at_line_start: the first chunk starts a line (False when a read
            starts in the middle of one: that line is passed as it is).
    """

    def __init__(self, at_line_start: bool = True) -> None:
        #: The start of the unfinished last line, held while it may be a progress line.
        self._held = b""
        #: The next byte continues a line that is not a progress line.
        self._mid_line = not at_line_start

    @property
    def held(self) -> int:
        """Bytes held back: the unfinished line that may still be a progress line."""
        return len(self._held)

    def feed(self, data: bytes) -> bytes:
        """The bytes of ``data`` (and of what was held) that are not progress lines, as far as known."""
        data, self._held = self._held + data, b""
        head = b""
        if self._mid_line:
            newline = data.find(b"\n")
            if newline < 0:
                return data
            head, data = data[: newline + 1], data[newline + 1 :]
        last_newline = data.rfind(b"\n")
        body, tail = data[: last_newline + 1], data[last_newline + 1 :]
        if tail and len(tail) <= MAX_LINE_BYTES and (tail.startswith(WORD) or WORD.startswith(tail)):
            self._held, tail = tail, b""
        self._mid_line = bool(tail)
        return head + _CANDIDATE_LINE.sub(_unless_progress, body) + tail

    def flush(self) -> bytes:
        """What is held, as it is: a last line without its newline is output, never progress."""
        held, self._held = self._held, b""
        self._mid_line = bool(held)
        return held


def _unless_progress(match: re.Match[bytes]) -> bytes:
    return b"" if parse_line(match.group(1)) is not None else match.group(0)
