"""What browsers are sent of the daemon's markers: both ways of missing events are a ``gap`` to a page
(the page then fetches its live parts again: tests/console/test_console_browser.py)."""

from __future__ import annotations

import pytest
from jinja2 import Environment

from pymgr.client import Event
from pymgr.console.eventview import browser_event


@pytest.mark.parametrize(
    "kind, data",
    [("gap", {"dropped": 3}), ("reset", {"since": 7, "oldest": 40, "last": 90})],
)
def test_events_the_hub_missed_are_a_gap_to_browsers(kind: str, data: dict[str, int]) -> None:
    event = Event(id=None, kind=kind, time=None, data=data)
    assert browser_event(Environment(), event) == b"event: gap\ndata: {}\n\n"


def test_a_heartbeat_or_an_unknown_kind_is_not_sent() -> None:
    for kind in ("heartbeat", "something-newer"):
        assert browser_event(Environment(), Event(id=None, kind=kind, time=None, data={})) is None
