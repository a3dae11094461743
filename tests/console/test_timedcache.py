"""The console's timed cache (the tasks page's start form per person): kept ttl_s, bounded, never a failure."""

from __future__ import annotations

import pytest

from pymgr.console.timedcache import TimedCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_an_entry_is_used_for_ttl_s_then_made_again() -> None:
    clock, made = Clock(), []

    async def make() -> int:
        made.append(clock.now)
        return len(made)

    cache: TimedCache[int] = TimedCache(5.0, 10, clock)
    assert await cache.get("alice", make) == 1
    clock.now = 104.5
    assert await cache.get("alice", make) == 1 and made == [100.0]
    assert await cache.get("bob", make) == 2  # each key its own
    clock.now = 105.0
    assert await cache.get("alice", make) == 3 and made == [100.0, 104.5, 105.0]


async def test_ttl_zero_keeps_nothing_and_the_oldest_entry_goes_first() -> None:
    clock, calls = Clock(), []

    async def make() -> int:
        calls.append(1)
        return len(calls)

    off: TimedCache[int] = TimedCache(0.0, 10, clock)
    assert [await off.get("a", make) for _ in range(3)] == [1, 2, 3]
    small: TimedCache[int] = TimedCache(60.0, 2, clock)
    for key in ("a", "b", "c"):  # "a" makes room for "c"
        await small.get(key, make)
    assert await small.get("b", make) == 5 and await small.get("a", make) == 7


async def test_a_failure_is_not_kept() -> None:
    clock = Clock()
    cache: TimedCache[int] = TimedCache(60.0, 10, clock)

    async def fail() -> int:
        raise RuntimeError("daemon down")

    async def works() -> int:
        return 1

    with pytest.raises(RuntimeError):
        await cache.get("a", fail)
    assert await cache.get("a", works) == 1
