"""What an edge checks before it has a call: the caller's rate, and the count of what it refuses itself.

Rules:
- ``EdgeGuard.admit`` takes one request from the caller's rate (429 /
  legacy err_code 7); ``EdgeGuard.refused`` counts a request the edge
  refused itself (a bad signature) among the audit's refusals.
- A caller is keyed by its strongest name (``identity_key``): its uid on the
  Unix socket, its key, its certificate, else its source address
  (``sources.py``: a loopback /8 or an IPv6 /64 is one source).
- A call's own checks (policy, params bound, audit) are the call
  pipeline's (``pipeline.py``), the same over every edge.
"""

from __future__ import annotations

import math

from pymgr.auth.audit import Auditor
from pymgr.auth.ratelimit import RateLimiter
from pymgr.auth.sources import source_of
from pymgr.core.identity import Identity
from pymgr.errors import PymgrError, RateLimited

__all__ = ["EdgeGuard", "identity_key"]


def identity_key(identity: Identity) -> str:
    """The key of a caller for per-identity limits: its strongest name, else its source (``source_of``)."""
    if identity.transport == "unix":
        return f"uid:{identity.uid}"
    if identity.key_id is not None:
        return f"key:{identity.key_id}"
    if identity.cert is not None:
        return f"cert:{identity.cert}"
    if identity.fleet_key is not None:
        return f"fleet:{identity.fleet_key}"
    host = (identity.peer or "?").rsplit(":", 1)[0]
    return f"{identity.transport}:{source_of(host)}"


class EdgeGuard:
    """Checks a transport makes before dispatch, and the audit of what it refuses.

    Args:
        limiter: the per-identity rate; None means no rate limit.
        auditor: records refusals; None records nothing.
    """

    def __init__(self, limiter: RateLimiter | None, auditor: Auditor | None) -> None:
        self.limiter = limiter
        self.auditor = auditor

    def admit(self, identity: Identity, *what: str) -> None:
        """Take one request from the caller's rate.

        Args:
            what: the request, for the audit line of a refusal (joined by spaces
                only then: the usual request pays nothing for it).

        Raises:
            RateLimited: with ``details.retry_after_s`` (whole seconds, at least 1).
        """
        limiter = self.limiter
        if limiter is None:
            return
        key = identity_key(identity)
        wait_s = limiter.check(key)
        if wait_s > 0:
            retry = max(1, math.ceil(wait_s))
            error = RateLimited(
                f"too many requests from {key}: the limit is {limiter.rate_per_s:g} per "
                f"second (bursts of {limiter.burst}); retry in {retry} s",
                details={"retry_after_s": retry},
            )
            if self.auditor is not None:
                self.auditor.refused(key, identity.transport, " ".join(what), error)
            raise error

    def refused(self, identity: Identity, what: str, error: PymgrError) -> None:
        """Count a request the transport refused in the audit's refusals (never raises)."""
        if self.auditor is not None:
            self.auditor.refused(identity_key(identity), identity.transport, what, error, identity.person)
