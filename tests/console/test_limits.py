"""The console's limits on both sides, on a fake clock: sessions, login delays, event streams."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from pymgr.client import AsyncClient, Event
from pymgr.console.hub import EventHub
from pymgr.console.sessions import Sessions
from pymgr.console.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_sessions_end_at_the_idle_and_absolute_limits_not_before() -> None:
    clock = Clock()
    sessions = Sessions(idle_s=10, absolute_s=25, max_sessions=5, clock=clock)
    token, session = sessions.create("alice", ("operators",))
    clock.now += 10
    assert sessions.get(token) is session  # exactly idle_s: still in force
    clock.now += 10
    assert sessions.get(token) is session
    clock.now += 5
    assert sessions.get(token) is session  # 25 s after login, used 5 s ago
    clock.now += 0.001
    assert sessions.get(token) is None and len(sessions) == 0  # past absolute_s
    token, _ = sessions.create("alice", ())
    clock.now += 10.001
    assert sessions.peek(token) is None and sessions.get(token) is None  # past idle_s


def test_peek_does_not_count_as_use() -> None:
    clock = Clock()
    sessions = Sessions(idle_s=10, absolute_s=100, max_sessions=5, clock=clock)
    token, _ = sessions.create("alice", ())
    for _ in range(2):
        clock.now += 4
        assert sessions.peek(token) is not None
    clock.now += 4
    assert sessions.get(token) is None  # 12 s unused: the peeks did not keep it


def test_at_most_max_sessions_the_least_recently_used_ends() -> None:
    sessions = Sessions(idle_s=10, absolute_s=100, max_sessions=2, clock=Clock())
    first, _ = sessions.create("a", ())
    second, _ = sessions.create("b", ())
    assert sessions.get(first) is not None  # first is now the most recently used
    third, _ = sessions.create("c", ())
    assert len(sessions) == 2 and sessions.get(second) is None
    assert sessions.get(first) is not None and sessions.get(third) is not None


def test_a_person_the_proxy_names_has_one_session_kept_in_step_with_the_table() -> None:
    clock = Clock()
    sessions = Sessions(idle_s=10, absolute_s=100, max_sessions=2, clock=clock)
    password, _ = sessions.create("bob", ())
    token, session, new = sessions.proxied("carol", ("viewers",))
    assert new and session.via_proxy
    for roles in [("operators",)] * 4:  # however often, without a cookie: the same session
        assert sessions.proxied("carol", roles) == (token, session, False)
    assert session.roles == ("operators",) and len(sessions) == 2 and sessions.get(password) is not None
    sessions.end(token)
    assert sessions._proxied == {}
    again, _, new = sessions.proxied("carol", ())
    assert new and again != token
    sessions.create("dave", ())
    sessions.create("erin", ())  # carol's is the least recently used: evicted, and out of the index
    assert sessions._proxied == {} and sessions.proxied("carol", ())[2]
    clock.now += 11  # past idle_s: expired, and out of the index at its next use
    assert sessions.proxied("carol", ())[2] and list(sessions._proxied) == ["carol"]


def test_session_ids_are_random_and_not_kept() -> None:
    sessions = Sessions(idle_s=10, absolute_s=100, max_sessions=5, clock=Clock())
    token, session = sessions.create("a", ())
    other, _ = sessions.create("a", ())
    assert token != other and len(token) >= 43
    assert token not in repr(sessions._table) and session.csrf != token


def test_login_delays_double_up_to_the_maximum() -> None:
    clock = Clock()
    throttle = LoginThrottle(free=2, delay_s=1, max_delay_s=5, clock=clock)
    waits = []
    for _ in range(7):
        throttle.failed("alice", "10.0.0.1")
        waits.append(throttle.wait_s("alice", "10.0.0.9"))
        clock.now += 100
    assert waits == [0, 0, 1, 2, 4, 5, 5]


def test_a_success_clears_the_name_not_the_address() -> None:
    throttle = LoginThrottle(free=0, delay_s=10, max_delay_s=10, clock=Clock())
    throttle.failed("alice", "10.0.0.1")
    throttle.succeeded("alice")
    assert throttle.wait_s("alice", "10.0.0.2") == 0
    assert throttle.wait_s("bob", "10.0.0.1") == 10


def test_the_throttle_forgets_the_oldest_beyond_max_keys() -> None:
    throttle = LoginThrottle(free=0, delay_s=10, max_delay_s=10, clock=Clock(), max_keys=4)
    throttle.failed("a", "1")
    throttle.failed("b", "2")
    throttle.failed("c", "3")  # 6 keys: a and 1 are forgotten
    assert throttle.wait_s("a", "9") == 0 and throttle.wait_s("x", "1") == 0
    assert throttle.wait_s("c", "9") == 10


def _event(n: int) -> Event:
    return Event(id=n, kind="progress", time=datetime.now(timezone.utc), data={"id": 1, "progress": n})


async def test_the_hub_takes_max_streams_and_closes_a_browser_that_falls_behind() -> None:
    client = AsyncClient(socket="/nonexistent.sock")
    rendered: list[int | None] = []

    def render(event: Event) -> bytes:
        rendered.append(event.id)
        return f"event {event.id}".encode()

    hub = EventHub(client, queue_size=2, max_streams=2, render=render)
    hub.publish(_event(0))  # nobody watches: not even rendered
    slow, fast = hub.subscribe(), hub.subscribe()
    assert slow is not None and fast is not None and hub.subscribe() is None
    hub.publish(_event(1))
    hub.publish(_event(2))
    assert fast.queue.get_nowait() == b"event 1" and fast.queue.get_nowait() == b"event 2"
    assert rendered == [1, 2]  # once an event, however many browsers
    hub.publish(_event(3))  # slow holds 2 already: it is closed, fast goes on
    assert slow.overflowed and not fast.overflowed and hub.watching == 1
    assert hub.subscribe() is not None  # its place is free again
    await client.close()
    await asyncio.sleep(0)
