"""The events hub: every state change and progress update of every run, to whoever listens.

Rules:
- ``publish`` never blocks and never fails: it stamps the event with the
  next sequence number and appends it to each subscriber's bounded queue.
- A subscriber that falls behind loses its *oldest* events, not the daemon
  its time: its queue keeps the newest ``queue_size``, and the next event it
  reads is a ``gap`` event saying how many it missed (then it can re-read
  the records it cares about).
- A subscriber's ``get`` waits on one future that ``publish`` (or
  ``wake``, when its reader must stop) resolves directly: an event reaches
  the waiting stream in one loop turn.
- The hub keeps the last ``history`` events (``[tasks] events_history``),
  whether anyone subscribes or not: ``tasks.events`` reads the newest, and
  ``since`` hands a reconnecting stream what it missed, or None when some
  of it is no longer held (or the id is from an earlier daemon: ids start
  at 1 again with each daemon).
- A subscription may take a predicate (``eventfilter.EventFilter``): an
  event it refuses never enters that queue, so a stream watching one run
  loses nothing to the traffic of the others. The predicate never raises.
- Event kinds: ``state`` (a run's record after a state change), ``progress``
  (``{"id", "progress", "progress_message"}``), ``gap`` (``{"dropped": N}``).
- One shape everywhere (``to_dict``): ``{"id", "kind", "time", "data"}``;
  ``id`` is the sequence number (None for a marker that is not in the
  history: a ``gap``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from collections.abc import Callable, Mapping
from typing import Any, Self, cast

from pymgr.tasks import shapes

#: Most events one ``tasks.events`` call returns: a JSON reply stays small.
RECENT_EVENTS = 100

#: Events the hub keeps by default (``[tasks] events_history``): at the ~100 events a second of a
#: busy daemon, ten seconds of a browser's reconnect delay; each is a record of under 1 KiB.
DEFAULT_HISTORY = 1000


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to a run."""

    #: Increasing from 1 for the daemon's lifetime (0 for a gap marker).
    seq: int
    kind: str
    data: Mapping[str, Any]
    #: Epoch seconds.
    time: float

    def to_dict(self) -> shapes.Event:
        """The one shape of an event: SSE, the client and ``tasks.events`` all carry it."""
        kind = cast(shapes.EventKind, self.kind)
        return {"id": self.seq or None, "kind": kind, "time": round(self.time, 3), "data": self.data}


class Subscription:
    """One listener's bounded queue; use as a context manager to unsubscribe."""

    def __init__(self, hub: EventHub, queue_size: int, accepts: Callable[[Event], bool] | None) -> None:
        self._hub = hub
        self._accepts = accepts
        self._events: deque[Event] = deque(maxlen=queue_size)
        self._dropped = 0
        #: The future a ``get`` in progress waits on: one future per wait, woken
        #: straight by ``_push`` (an ``asyncio.Event`` plus a timeout context
        #: cost several loop turns more per event).
        self._waiter: asyncio.Future[None] | None = None

    def _push(self, event: Event) -> None:
        if self._accepts is not None and not self._accepts(event):
            return
        if len(self._events) == self._events.maxlen:
            self._dropped += 1
        self._events.append(event)
        self.wake()

    def wake(self) -> None:
        """End the ``get`` in progress now: it returns the next event, or None if there is none."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout_s: float | None = None) -> Event | None:
        """The next event (a ``gap`` first if some were lost), or None after ``timeout_s`` or a ``wake``."""
        if not self._events and not self._dropped:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = None if timeout_s is None else loop.call_later(timeout_s, self.wake)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._events and not self._dropped:
                return None
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            return Event(0, "gap", {"dropped": dropped}, time.time())
        return self._events.popleft()

    def pending(self) -> list[Event]:
        """Every event already queued, without waiting (a ``gap`` first if some were lost)."""
        events = []
        if self._dropped:
            events.append(Event(0, "gap", {"dropped": self._dropped}, time.time()))
            self._dropped = 0
        events.extend(self._events)
        self._events.clear()
        return events

    def close(self) -> None:
        self._hub._subscribers.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EventHub:
    """See the module rules."""

    def __init__(self, queue_size: int, history: int = DEFAULT_HISTORY) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, not {queue_size}")
        if history < 1:
            raise ValueError(f"history must be >= 1, not {history}")
        self.queue_size = queue_size
        self._seq = 0
        self._subscribers: set[Subscription] = set()
        self._history: deque[Event] = deque(maxlen=history)

    def publish(self, kind: str, data: Mapping[str, Any]) -> Event:
        self._seq += 1
        event = Event(self._seq, kind, data, time.time())
        self._history.append(event)
        for subscriber in self._subscribers:
            subscriber._push(event)
        return event

    def subscribe(self, accepts: Callable[[Event], bool] | None = None) -> Subscription:
        """A new queue of every event published from now on (that ``accepts`` takes, if given)."""
        subscription = Subscription(self, self.queue_size, accepts)
        self._subscribers.add(subscription)
        return subscription

    def recent(self, limit: int = RECENT_EVENTS) -> list[Event]:
        """The newest ``limit`` events, oldest first."""
        return list(self._history)[-limit:] if limit > 0 else []

    def since(self, last_id: int) -> list[Event] | None:
        """Every event after ``last_id``, oldest first; None if some of them are no longer held.

        None too for an id this daemon has not given yet (one from before a restart).
        """
        if last_id > self._seq or last_id < self.oldest - 1:
            return None
        return [event for event in self._history if event.seq > last_id]

    def reset(self, since: int) -> Event:
        """The marker that says the events after ``since`` are no longer all held (not itself held)."""
        return Event(0, "reset", {"since": since, "oldest": self.oldest, "last": self._seq}, time.time())

    @property
    def held(self) -> int:
        """Events held (at most ``history``)."""
        return len(self._history)

    @property
    def last_id(self) -> int:
        """The id of the newest event published (0 before the first)."""
        return self._seq

    @property
    def oldest(self) -> int:
        """The id of the oldest event held (the next id when none is held)."""
        return self._history[0].seq if self._history else self._seq + 1

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
