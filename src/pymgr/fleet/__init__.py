"""The fleet: tasks and actions for many hosts, through Redis Streams (docs/fleet.md).

An edge, like the transports: the core never imports it, and nothing of it is
imported unless ``[fleet]`` is configured or ``pymgr fleet`` runs (it needs
``pip install 'pymgr[fleet]'``: redis and cryptography).

- ``jobs.py``: a job's canonical encoding, signature and decoder (pure).
- ``keys.py``: the Ed25519 key files; ``keyspace.py``: the Redis key names and job states.
- ``agent.py``: the host side (a task in the daemon's loop); ``runner.py``: one job on this host.
- ``client.py``: the submitting side, ``FleetClient``; ``aclient.py``, ``AsyncFleetClient``;
  ``steps.py`` each of their requests once, as pure steps both drive; ``api.py`` what both share
  (constructor, scripts, signed submits and stops); ``results.py`` what they return.
- ``control.py``: the host side of stops (its control stream).
"""

from __future__ import annotations

from typing import Any

__all__ = ["AsyncFleetClient", "FleetClient", "HostInfo", "JobInfo", "OutputChunk", "StopResult"]


def __getattr__(name: str) -> Any:
    # Lazy: ``pymgr.fleet.jobs`` (which the tests fuzz) must not pull in the Redis client.
    if name == "AsyncFleetClient":
        from pymgr.fleet.aclient import AsyncFleetClient

        return AsyncFleetClient
    if name == "FleetClient":
        from pymgr.fleet.client import FleetClient

        return FleetClient
    if name in __all__:
        from pymgr.fleet import results

        return getattr(results, name)
    raise AttributeError(f"module 'pymgr.fleet' has no attribute {name!r}")
