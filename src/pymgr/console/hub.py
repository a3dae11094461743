"""One event subscription to the daemon, fanned out to every browser watching.

Rules:
- ``run`` holds one ``GET /v1/events`` stream (the console's own, not a person's: who may watch is
  checked per browser, when its stream opens). A broken stream is opened again after a growing
  pause (1 s to 30 s), from the last event id seen, so nothing held by the daemon is missed.
- ``publish`` never waits: each browser has a bounded queue; one that falls ``queue_size`` events
  behind is closed (its page's EventSource reconnects and reads the table again).
- An event is made into what browsers are sent (``render``: the SSE bytes, a state's table row
  included) once, in ``publish``, not once per browser: 200 browsers cost one render an event.
- At most ``max_streams`` browsers at once; ``subscribe`` returns None beyond that.
"""

from __future__ import annotations

import asyncio
import logging

from collections.abc import Callable

from pymgr.client import AsyncClient, ConnectionFailed, Event
from pymgr.errors import PymgrError

log = logging.getLogger("pymgr.console")

#: Pauses before opening the daemon's stream again: from the first to the longest.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0


class Subscriber:
    def __init__(self, queue_size: int) -> None:
        #: What this browser is to be sent, each event as ``render`` made it.
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        #: Set when this browser fell behind: its stream ends.
        self.overflowed = False


class EventHub:
    """Args:
    render: an event as browsers are sent it (None: browsers are not sent this kind).
    """

    def __init__(
        self,
        client: AsyncClient,
        queue_size: int,
        max_streams: int,
        render: Callable[[Event], bytes | None],
    ) -> None:
        self._client = client
        self._render = render
        self._queue_size = queue_size
        self._max_streams = max_streams
        self._subscribers: set[Subscriber] = set()
        self._last_id: int | None = None
        #: Streams opened to the daemon since start (1 while it stays up).
        self.daemon_streams_opened = 0
        self.connected = False

    @property
    def watching(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscriber | None:
        if len(self._subscribers) >= self._max_streams:
            return None
        subscriber = Subscriber(self._queue_size)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def publish(self, event: Event) -> None:
        if not self._subscribers or (chunk := self._render(event)) is None:
            return
        for subscriber in list(self._subscribers):
            try:
                subscriber.queue.put_nowait(chunk)
            except asyncio.QueueFull:
                subscriber.overflowed = True
                self._subscribers.discard(subscriber)

    async def run(self) -> None:
        """Hold the daemon's stream until cancelled."""
        pause_s = RETRY_FIRST_S
        while True:
            try:
                self.daemon_streams_opened += 1
                async for event in self._client.events(since=self._last_id):
                    self.connected = True
                    pause_s = RETRY_FIRST_S
                    if event.id is not None:
                        self._last_id = event.id
                    self.publish(event)
            except (PymgrError, ConnectionFailed) as exc:
                log.warning("the daemon's event stream failed (%s); again in %.0f s", exc, pause_s)
            self.connected = False
            await asyncio.sleep(pause_s)
            pause_s = min(RETRY_MAX_S, pause_s * 2)
