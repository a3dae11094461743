"""pymgr's task events (``GET /v1/events``, server-sent events) as the task-start figure reads them.

The stream is opened before the first start and read on its own
connection; each ``state`` event carries the run's record. The time an
event is seen is taken right after the read that brought it, so "start
request to running" is measured by the daemon's own announcement, not by
polling it (a poll would add its round trip and load the daemon meanwhile).
"""

from __future__ import annotations

import collections
import json
import socket
import time
from typing import Any

import httptools

from bench.loadgen import LoadError

#: Seconds to wait for an event before the figure fails.
EVENT_TIMEOUT_S = 10.0


class EventError(LoadError):
    """The event stream failed or went quiet; the message says how."""


class EventStream:
    """One ``GET /v1/events`` connection; ``wait_for`` returns a run's next matching state."""

    def __init__(self, unix_path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(EVENT_TIMEOUT_S)
        self._sock.connect(unix_path)
        self._sock.sendall(b"GET /v1/events HTTP/1.1\r\nHost: pymgr\r\n\r\n")
        self._parser = httptools.HttpResponseParser(self)
        self._text = b""
        #: (seen at perf_counter, record) of state events not consumed yet.
        self._states: collections.deque[tuple[float, dict[str, Any]]] = collections.deque()
        self._now = 0.0

    # httptools callback
    def on_body(self, body: bytes) -> None:
        self._text += body
        *blocks, self._text = self._text.replace(b"\r\n", b"\n").split(b"\n\n")
        for block in blocks:
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
            if fields.get(b"event") == b"state" and b"data" in fields:
                self._states.append((self._now, json.loads(fields[b"data"])))

    def _read(self) -> None:
        data = self._sock.recv(65536)
        self._now = time.perf_counter()
        if not data:
            raise EventError("the daemon closed the event stream")
        self._parser.feed_data(data)
        if self._parser.get_status_code() >= 400:
            raise EventError(f"GET /v1/events answered HTTP {self._parser.get_status_code()}")

    def wait_for(self, task_id: int, states: frozenset[str]) -> tuple[float, dict[str, Any]]:
        """The first state event of run ``task_id`` in ``states``: when it was seen, and the record.

        Raises:
            EventError: the stream ended, or no such event came within ``EVENT_TIMEOUT_S``.
        """
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while True:
            while self._states:
                seen, record = self._states.popleft()
                if record.get("id") == task_id and record.get("state") in states:
                    return seen, record
            if time.monotonic() > deadline:
                raise EventError(f"no {sorted(states)} event for task {task_id} within {EVENT_TIMEOUT_S} s")
            try:
                self._read()
            except TimeoutError:
                continue  # the deadline check above ends the wait

    def close(self) -> None:
        self._sock.close()
