"""The streaming routes' side of the HTTP app: task logs and server-sent events.

Rules:
- A route returns a ``Stream`` (``messages``) instead of a JSON result
  when its reply is sent as it is produced; the connection sends it chunked
  (``connection``) and cancels the producer when the client hangs up, even
  while it waits for more (a followed log that is quiet, an event stream
  between events).
- Errors are found before the stream starts (the route calls its action
  first: policy, 404, bad offsets), so they still get the JSON envelope.
  An error in the middle of a stream can only end it: it is logged.
- Query parameters of the streaming routes are parsed here, strictly: an
  unknown name or a bad value is a ``bad_params`` error naming it. The
  events' filters and cursor are only read here (a number is a number):
  the ``tasks.events`` action, which the route calls with them, is their
  one definition and checks them, so the stream and the action take the same.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl

from pymgr.errors import MalformedRequest

#: Query parameters of ``GET /v1/tasks/ID/logs``.
LOG_QUERY = frozenset({"offset", "follow", "progress"})

#: Query parameters of ``GET /v1/events``.
EVENT_QUERY = ("task", "type", "key", "since")

#: The words a boolean query parameter may be (any case).
QUERY_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


class StreamSource(Protocol):
    """What the streaming routes read from (``pymgr.tasks.streams.TaskStreams``)."""

    def task_log(self, task_id: int, offset: int, follow: bool, progress: bool) -> AsyncIterator[bytes]: ...

    def events(
        self, *, task: int | None, type: str | None, key: str | None, since: int | None
    ) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True, slots=True)
class EventQuery:
    """What one ``GET /v1/events`` asks for: filters (AND) and the id to resume after."""

    task: int | None = None
    type: str | None = None
    key: str | None = None
    since: int | None = None

    def params(self) -> dict[str, int | str]:
        """The ones given, as ``tasks.events`` takes them."""
        given = {"task": self.task, "type": self.type, "key": self.key, "since": self.since}
        return {name: value for name, value in given.items() if value is not None}


def event_query(query_string: bytes, headers: list[tuple[bytes, bytes]]) -> EventQuery:
    """The filters and cursor of an events request.

    The ``Last-Event-ID`` header (what a browser's EventSource sends when it
    reconnects, to the same URL) wins over ``since``: it is the newer of the two.

    Raises:
        MalformedRequest: an unknown or repeated parameter, or an id or cursor
            that is not a whole number (``tasks.events`` checks the values).
    """
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    query = dict(pairs)
    unknown = sorted(set(query) - set(EVENT_QUERY))
    if unknown:
        raise MalformedRequest(
            f"unknown query parameter {unknown[0]!r}; parameters: {', '.join(EVENT_QUERY)}"
        )
    if len(query) < len(pairs):
        raise MalformedRequest("a query parameter is given more than once; give each once")
    last_event_id = next((value for name, value in headers if name.lower() == b"last-event-id"), b"")
    since = _whole(query.get("since"), "since")
    if last_event_id.strip():
        since = _whole(last_event_id.decode("latin-1"), "Last-Event-ID")
    return EventQuery(_whole(query.get("task"), "task"), query.get("type"), query.get("key"), since)


#: The most digits a number of the query may have: an id is below 2**63 (19 digits; the action
#: checks the range). Bounded before int(), which refuses over 4,300 digits with a ValueError.
MAX_DIGITS = 19


def _whole(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    if re.fullmatch(rf"\s*-?0*[0-9]{{1,{MAX_DIGITS}}}\s*", text, flags=re.ASCII) is None:
        shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
        raise MalformedRequest(
            f"{name}: must be a whole number of at most {MAX_DIGITS} digits, not {shown!r}"
        )
    return int(text)


def log_query(query_string: bytes) -> tuple[str, bool, bool]:
    """``offset`` (as sent; the action validates it), ``follow`` and ``progress`` of a logs request.

    Raises:
        MalformedRequest: an unknown parameter, or ``follow`` or ``progress`` not true/false.
    """
    query = dict(parse_qsl(query_string.decode("latin-1")))
    unknown = sorted(set(query) - LOG_QUERY)
    if unknown:
        # The message predates progress=, and callers match it; docs/api.md lists all three.
        raise MalformedRequest(f"unknown query parameter {unknown[0]!r}; parameters: offset, follow")
    return query.get("offset", "0"), _boolean(query, "follow", False), _boolean(query, "progress", True)


def _boolean(query: dict[str, str], name: str, default: bool) -> bool:
    value = query.get(name)
    if value is None:
        return default
    if value.lower() not in QUERY_BOOLEANS:
        raise MalformedRequest(f"{name}: must be true or false, not {value!r}")
    return QUERY_BOOLEANS[value.lower()]
