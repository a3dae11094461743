"""Open streams (events, a followed log) held to the policy in force, not only to the one they opened under.

Rules:
- A stream is authorised once, when it opens, by the call the route makes
  (``tasks.events``, ``tasks.logs`` with ``limit=0``). It may then stay open
  for hours, so a policy swap (SIGHUP) asks every open stream again
  (``recheck``, a watcher of ``GuardedDispatcher.reload_policy``): a person
  is resolved again through the new delegates, from the request's own
  headers (a delegate removed, a role taken away, a namespace renamed all
  fail), and the new policy must still allow the operation
  (``Policy.allows``: ``tasks.events``; ``tasks.logs:TYPE`` for the run's type).
- A stream that fails is ended as a shutdown ends it: its producer is
  cancelled and the body gets its last chunk, so a client sees the end and,
  reconnecting, the 403 of the new policy. Each ending is logged; a stream
  that cannot be asked (an error) is ended too: fail closed.
- Only the producer's task is cancelled, never the connection's: the
  connection goes on serving its next request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from pymgr.auth.policy import Policy, describe_identity
from pymgr.core.identity import Identity
from pymgr.core.registry import Registry
from pymgr.errors import PymgrError
from pymgr.transport.http.messages import Request

__all__ = ["StreamGrants"]

log = logging.getLogger("pymgr.http")


@dataclass(frozen=True, slots=True, eq=False)
class _Open:
    producer: asyncio.Task[object] | None
    request: Request
    identity: Identity
    action: str
    task_id: int | None


class StreamGrants:
    """The streams open now, each with what it was granted; ``recheck`` ends those the policy no longer grants.

    Args:
        policy: the policy in force now (None: no policy, every stream stays).
        registry: the served actions (``tasks.events``, ``tasks.logs``).
    """

    def __init__(self, policy: Callable[[], Policy | None], registry: Registry) -> None:
        self._policy = policy
        self._registry = registry
        self._open: set[_Open] = set()

    async def hold(
        self,
        chunks: AsyncIterator[bytes],
        request: Request,
        identity: Identity,
        action: str,
        task_id: int | None = None,
    ) -> AsyncIterator[bytes]:
        """``chunks``, for as long as ``identity`` may still call ``tasks.<action>`` (on task ``task_id``)."""
        entry = _Open(asyncio.current_task(), request, identity, action, task_id)  # the stream's producer
        self._open.add(entry)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self._open.discard(entry)
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def recheck(self) -> None:
        """Ask every open stream again under the policy in force; end the ones it refuses."""
        policy = self._policy()
        if policy is None:
            return
        for entry in list(self._open):
            if entry.producer is not None and not self._still_allowed(policy, entry):
                log.warning(
                    "stream %s %s of %s ended: the policy in force no longer allows it",
                    entry.request.method,
                    entry.request.path,
                    describe_identity(entry.identity),
                )
                self._open.discard(entry)
                entry.producer.cancel()

    @property
    def open_count(self) -> int:
        """How many streams are held (for tests and the log)."""
        return len(self._open)

    def _still_allowed(self, policy: Policy, entry: _Open) -> bool:
        try:
            return self._allowed(policy, entry)
        except Exception:  # a bug here must not keep a stream the policy may refuse, nor break the reload
            log.exception(
                "stream %s %s: cannot ask the policy again; ending it",
                entry.request.method,
                entry.request.path,
            )
            return False

    def _allowed(self, policy: Policy, entry: _Open) -> bool:
        identity = entry.identity
        if identity.person is not None:  # the delegate, asked again with the request's own headers
            delegate = replace(identity, person=None, roles=())
            try:
                again = policy.delegation.resolve(delegate, entry.request.headers)
            except PymgrError:
                return False
            if (again.person, again.roles) != (identity.person, identity.roles):
                return False
        spec = self._registry.get("tasks", entry.action)
        if entry.task_id is None:
            return policy.allows(identity, spec)
        operation = policy.operation_name("tasks", entry.action, {"id": entry.task_id})
        task_type = operation.partition(":")[2]
        return task_type not in ("", "?") and policy.allows(identity, spec, task_type)
