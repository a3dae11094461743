"""The event loop every service mode runs the daemon on: uvloop where it is installed.

uvloop is a dependency on every platform but Windows (pyproject.toml); without
it (Windows, or a minimal install) the standard asyncio loop serves the same
code, only slower.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

try:
    import uvloop
except ModuleNotFoundError:  # pragma: no cover - Windows, or a minimal install
    _loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
else:
    _loop_factory = uvloop.new_event_loop


def new_runner() -> asyncio.Runner:
    """An ``asyncio.Runner`` on uvloop when it is installed, else on the standard loop."""
    return asyncio.Runner(loop_factory=_loop_factory)
