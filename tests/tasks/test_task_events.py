"""The events hub: bounded queues per subscriber, gap markers, never a blocked publisher."""

from __future__ import annotations

import asyncio
import time

import pytest

from pymgr.tasks.events import RECENT_EVENTS, EventHub


async def test_subscribers_get_every_event_in_order() -> None:
    hub = EventHub(queue_size=10)
    with hub.subscribe() as a, hub.subscribe() as b:
        for i in range(3):
            hub.publish("state", {"id": i})
        for sub in (a, b):
            got = [await sub.get(1.0) for _ in range(3)]
            assert [(e.seq, e.kind, e.data) for e in got] == [
                (1, "state", {"id": 0}),
                (2, "state", {"id": 1}),
                (3, "state", {"id": 2}),
            ]  # type: ignore[union-attr]
    assert hub.subscribers == 0


async def test_get_times_out_with_none_and_wakes_on_publish() -> None:
    hub = EventHub(queue_size=10)
    with hub.subscribe() as sub:
        assert await sub.get(0.01) is None
        asyncio.get_running_loop().call_later(0.02, hub.publish, "progress", {"id": 1})
        event = await sub.get(5.0)
        assert event is not None and event.kind == "progress"


async def test_wake_ends_a_wait_with_none_and_a_cancelled_wait_leaves_nothing_behind() -> None:
    hub = EventHub(queue_size=10)
    with hub.subscribe() as sub:
        asyncio.get_running_loop().call_later(0.01, sub.wake)
        assert await sub.get(None) is None  # no timeout: only the wake ends it
        waiting = asyncio.ensure_future(sub.get(None))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        hub.publish("state", {"id": 1})  # nobody waits now: it is queued, not lost
        event = await sub.get(0.0)
        assert event is not None and event.data == {"id": 1}


async def test_a_slow_subscriber_loses_the_oldest_and_gets_a_gap_both_sides() -> None:
    hub = EventHub(queue_size=3)
    with hub.subscribe() as at_limit, hub.subscribe() as over:
        for i in range(3):
            hub.publish("state", {"id": i})
        assert [(await at_limit.get(1.0)).data["id"] for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
        hub.publish("state", {"id": 3})
        gap = await over.get(1.0)
        assert gap is not None and (gap.kind, gap.data, gap.seq) == ("gap", {"dropped": 1}, 0)
        assert [(await over.get(1.0)).data["id"] for _ in range(3)] == [1, 2, 3]  # type: ignore[union-attr]


def test_publish_never_blocks_on_a_subscriber_that_never_reads() -> None:
    hub = EventHub(queue_size=5)
    hub.subscribe()  # never read
    started = time.perf_counter()
    for i in range(100_000):
        hub.publish("progress", {"id": i})
    assert time.perf_counter() - started < 5.0
    assert [e.seq for e in hub.recent(2)] == [99_999, 100_000]


def test_recent_keeps_the_last_ones() -> None:
    hub = EventHub(queue_size=1)
    for i in range(RECENT_EVENTS + 5):
        hub.publish("state", {"id": i})
    recent = hub.recent()
    assert len(recent) == RECENT_EVENTS and recent[-1].data == {"id": RECENT_EVENTS + 4}
    assert hub.recent(0) == [] and [e.data["id"] for e in hub.recent(1)] == [RECENT_EVENTS + 4]
    assert recent[0].to_dict()["kind"] == "state"


def test_queue_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^queue_size must be >= 1, not 0$"):
        EventHub(0)


def test_since_replays_within_the_history_and_refuses_past_it_or_from_the_future() -> None:
    hub = EventHub(queue_size=1, history=3)
    assert hub.since(0) == [] and hub.oldest == 1
    for i in range(5):
        hub.publish("state", {"id": i})
    assert hub.oldest == 3 and hub.last_id == 5
    assert [e.seq for e in hub.since(2) or []] == [3, 4, 5]  # just inside: nothing was lost
    assert hub.since(1) is None  # event 2 is gone
    assert hub.since(5) == [] and hub.since(6) is None  # an id this daemon never gave
    assert hub.recent(1)[0].to_dict()["id"] == 5


def test_a_filtered_subscription_queues_only_its_runs() -> None:
    from pymgr.tasks.eventfilter import EventFilter

    wanted = EventFilter(type="scan")
    hub = EventHub(queue_size=10)
    with hub.subscribe(wanted.accepts) as sub:
        hub.publish("state", {"id": 1, "type": "scan", "key": None, "state": "queued"})
        hub.publish("state", {"id": 2, "type": "echo", "key": None, "state": "queued"})
        hub.publish("progress", {"id": 2, "progress": 5.0, "progress_message": None})
        hub.publish("progress", {"id": 1, "progress": 5.0, "progress_message": None})
        hub.publish("state", {"id": 1, "type": "scan", "key": None, "state": "succeeded"})
        assert [(e.kind, e.data["id"]) for e in sub.pending()] == [
            ("state", 1),
            ("progress", 1),
            ("state", 1),
        ]
    assert wanted._runs == {2: False}  # the ended run is forgotten
