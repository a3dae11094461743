"""Server-sent events, parsed from bytes as they arrive (pure, no I/O): the client's half of GET /v1/events.

Rules (the subset of the WHATWG event-stream format pymgr sends):
- Lines end with ``\\n`` (a ``\\r`` before it is dropped); a blank line ends
  an event. ``event:``, ``data:`` and ``id:`` fields are read, one space
  after the colon is dropped, several ``data:`` lines are joined with
  ``\\n``; lines starting with ``:`` are comments.
- An event's data is JSON (pymgr sends nothing else); it is decoded, and
  data that is not JSON is handed over as text.
- An event comes out in the shape ``tasks.events`` returns: ``{"id",
  "kind", "time", "data"}`` (``id`` an int, or None for a marker without
  one; ``time`` from pymgr's ``time:`` field, None without it), plus
  ``event``, the same as ``kind`` (its name in the SSE format, which
  callers of the first client read).
- A line longer than ``max_line_bytes`` is an error: a stream that sends one
  is not pymgr's.
"""

from __future__ import annotations

import json
from typing import Any

#: Longest line accepted: far above any pymgr event (a task record is a few KiB).
MAX_LINE_BYTES = 1024 * 1024


class SseParser:
    """``feed(bytes)`` returns the events completed by those bytes (see the module rules)."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._buffer = b""
        self._fields: dict[str, Any] = {}
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        """The events completed by ``chunk``.

        Raises:
            ValueError: a line longer than ``max_line_bytes``.
        """
        self._buffer += chunk
        events = []
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > self.max_line_bytes:
            raise ValueError(f"event stream line longer than max_line_bytes={self.max_line_bytes}")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if not line:
                if self._data or self._fields:
                    events.append(self._event())
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self._data.append(value)
            elif name in ("event", "id", "time"):
                self._fields[name] = value
        return events

    def _event(self) -> dict[str, Any]:
        text = "\n".join(self._data)
        try:
            data: Any = json.loads(text) if text else None
        except ValueError:
            data = text
        kind = self._fields.get("event", "message")
        event = {
            "id": _number(self._fields.get("id"), int),
            "kind": kind,
            "time": _number(self._fields.get("time"), float),
            "data": data,
            "event": kind,
        }
        self._fields, self._data = {}, []
        return event


def _number(text: str | None, kind: type[int] | type[float]) -> int | float | None:
    """A field's number, or None when it is absent or not a number (not pymgr's)."""
    try:
        return None if text is None else kind(text)
    except ValueError:
        return None
