"""How the host side of the fleet waits for Redis: what a lost Redis raises, and the first wait.

Every loop that talks to Redis (the agent's read loop and reports, the
control stream's loop) waits ``FIRST_BACKOFF_S`` after Redis went away,
doubling up to ``[fleet] reconnect_max_s``, and starts over.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["FIRST_BACKOFF_S", "REDIS_DOWN"]

#: What a lost or restarting Redis raises: the agent waits and starts over.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
#: The first wait after Redis went away; it doubles up to ``[fleet] reconnect_max_s``.
FIRST_BACKOFF_S = 0.1
