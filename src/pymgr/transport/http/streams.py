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
  unknown name or a bad value is a ``bad_params`` error naming it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol
from urllib.parse import parse_qsl

from pymgr.errors import MalformedRequest

#: Query parameters of ``GET /v1/tasks/ID/logs``.
LOG_QUERY = frozenset({"offset", "follow"})

#: The words a boolean query parameter may be (any case).
QUERY_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


class StreamSource(Protocol):
    """What the streaming routes read from (``pymgr.tasks.streams.TaskStreams``)."""

    def task_log(self, task_id: int, offset: int, follow: bool) -> AsyncIterator[bytes]: ...

    def events(self) -> AsyncIterator[bytes]: ...


def log_query(query_string: bytes) -> tuple[str, bool]:
    """``offset`` (as sent; the action validates it) and ``follow`` of a logs request.

    Raises:
        MalformedRequest: an unknown parameter, or ``follow`` not true/false.
    """
    query = dict(parse_qsl(query_string.decode("latin-1")))
    unknown = sorted(set(query) - LOG_QUERY)
    if unknown:
        raise MalformedRequest(f"unknown query parameter {unknown[0]!r}; parameters: offset, follow")
    follow = query.get("follow", "false").lower()
    if follow not in QUERY_BOOLEANS:
        raise MalformedRequest(f"follow: must be true or false, not {query['follow']!r}")
    return query.get("offset", "0"), QUERY_BOOLEANS[follow]
