"""The ``metrics`` module: the daemon's counters and gauges as one read-only action.

``GET /metrics`` serves the same snapshot in the Prometheus text format
(``transport/http/metrics.py``); this action gives it as JSON to any
transport (``pymgr call metrics snapshot``). Enable it in ``[modules]
enabled`` and allow ``metrics.snapshot`` (or ``*:read``) to the scraper.
"""

from __future__ import annotations

from typing import Any

from pymgr.core.registry import Module, action
from pymgr.errors import Unavailable
from pymgr.metrics import Metrics


class MetricsModule(Module):
    """What the daemon counts: calls by outcome, task runs, open connections, the keeper."""

    name = "metrics"

    @action(read_only=True)
    async def snapshot(self) -> dict[str, Any]:
        """Every counter and gauge now (see docs/metrics.md for each name)."""
        metrics: Metrics | None = self.context.metrics
        if metrics is None:
            raise Unavailable("this daemon keeps no metrics")
        return metrics.snapshot()
