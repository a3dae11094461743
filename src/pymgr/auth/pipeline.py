"""The one path of a call from any edge (HTTP routes, the legacy server) to its action.

``GuardedDispatcher.__init__`` composes it, and ``call`` reads top to bottom,
outermost layer first:

1. audit (``_AuditedCall``): whatever happens below, the call ends as one
   line in the audit log if its action ran, or as one count among the
   refusals if it did not (``auth/audit.py``);
2. the params bound (``max_params_bytes``, 413), before anything reads them;
3. the core dispatcher (``core/dispatch.py``), composed with the policy as
   its authorizers and the audit's hold as its last word: metrics (count and
   duration) -> look up -> authorize (the policy, before validation, so a
   caller who may not call learns nothing of the params) -> validate ->
   authorize the params (a task's type) -> hold room for the record (no
   action runs that could not be recorded) -> the action.

The audit sits outside the policy because a denied call must still be
counted; the core knows nothing of policies or audit logs, only of the
callables it is handed. Replacing the policy (SIGHUP) takes effect at the
next call: setting it hands its methods to the dispatcher.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import pydantic_core

from pymgr.auth.audit import Auditor, redact, secret_params
from pymgr.auth.guard import identity_key
from pymgr.auth.policy import Policy, PolicyError
from pymgr.core.dispatch import Call, Dispatcher, allow_all
from pymgr.core.registry import Registry
from pymgr.errors import NotFound, NotRecorded, PymgrError, PymgrInternalError, TooLarge, Unavailable
from pymgr.metrics import Metrics

__all__ = ["GuardedDispatcher"]

#: The json module's compact encoder, for params pydantic-core cannot encode (bytes that are not UTF-8, a cycle).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


class GuardedDispatcher:
    """The dispatcher every edge calls: the core dispatcher with the policy, a params bound and the audit.

    Args:
        policy: decides who may call what; None allows every call (tests, benches).
        auditor: writes the records and counts the refusals; None writes nothing.
        max_params_bytes: the largest params object, as compact JSON.
        metrics: counts every call (None: nothing is counted).
        policy_factory: builds the policy of a reloaded config (``reload_policy``).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        policy: Policy | None,
        auditor: Auditor | None,
        max_params_bytes: int,
        metrics: Metrics | None = None,
        policy_factory: Callable[[Any], Policy] | None = None,
    ) -> None:
        self.registry = registry
        self.auditor = auditor
        self.max_params_bytes = max_params_bytes
        self._policy_factory = policy_factory
        #: Called after every policy swap (the HTTP edge asks its open streams again).
        self.policy_watchers: list[Callable[[], None]] = []
        self._dispatcher = Dispatcher(registry, metrics=metrics)
        self.policy = policy

    async def call(self, call: Call) -> Any:
        """Run one call: audited, bounded, then dispatched (the module docstring has the order).

        Raises:
            TooLarge: the params are larger than ``max_params_bytes``.
            Unavailable: the call's record could not be written, so it did not run (``fail_closed``).
            NotRecorded: the call ran but its record could not be written (``fail_closed``).
            PymgrError: whatever dispatch raised.
        """
        if self.auditor is None:
            self._params_json(call)
            return await self._dispatcher.call(call)
        return await _AuditedCall(self, self.auditor, call).run()

    def reload_policy(self, config: Any) -> list[str]:
        """Build the policy of ``config`` and swap it in (``service/reload.py``'s hook); the changes, for the log.

        Calls in flight finish under the policy they started with; every call after this uses the new one.

        Raises:
            PolicyError: the new policy does not build (nothing changed), or this dispatcher has no factory.
        """
        if self._policy_factory is None:
            raise PolicyError(
                "this dispatcher was built without a policy factory: restart to change [policy]"
            )
        old = self.policy
        new = self._policy_factory(config)
        self.policy = new
        for watcher in self.policy_watchers:
            watcher()
        before = "none" if old is None else f"{old.rule_count} rules"
        return [f"replaced ({before} -> {new.rule_count} rules)"]

    @property
    def policy(self) -> Policy | None:
        """Who may call what; the audit's names of calls come from it, so replacing it drops them."""
        return self._policy

    @policy.setter
    def policy(self, policy: Policy | None) -> None:
        self._policy = policy
        # The dispatcher's checks are the policy's own methods: calls in flight keep the ones they started with.
        self._dispatcher.authorize = allow_all if policy is None else policy.authorize
        self._dispatcher.authorize_params = None if policy is None else policy.authorize_params
        #: Per known (module, action): the audit's operation name (None: the params decide it) and
        #: the secret parameter names (from the params' JSON Schema, too slow to build per call).
        self._known_names: dict[tuple[str, str], tuple[str | None, frozenset[str]]] = {}

    def _params_json(self, call: Call) -> str | None:
        """The params as compact JSON (reused by the audit line), bounded by ``max_params_bytes``.

        Raises:
            TooLarge: naming the size and the limit.
        """
        try:
            # pydantic-core writes the same compact UTF-8 JSON as _ENCODER for what JSON can carry, at a tenth of
            # the cost.
            data = pydantic_core.to_json(call.params, fallback=str)
        except (
            ValueError
        ):  # bytes that are not UTF-8, a cycle: the json module's answer, so nothing escapes the bound
            try:
                data = _ENCODER.encode(call.params).encode()
            except (TypeError, ValueError):  # not JSON-able at all; dispatch reports the type
                return None
        if (size := len(data)) > self.max_params_bytes:
            raise TooLarge(
                f"params of {call.module}.{call.action} are {size} bytes of JSON, more than "
                f"max_params_bytes={self.max_params_bytes}",
                details={"limit": self.max_params_bytes, "size": size},
            )
        return data.decode()

    def _names(self, call: Call) -> tuple[str, frozenset[str] | None]:
        """The call's operation name and its secret parameter names (None: the action is unknown)."""
        names = self._known_names.get((call.module, call.action))
        if names is None:
            try:
                spec = self.registry.get(call.module, call.action)
            except NotFound:
                return self._operation_name(call), None
            by_params = self._policy is not None and self._policy.operation_depends_on_params(spec)
            names = (None if by_params else self._operation_name(call), secret_params(spec.params_model))
            self._known_names[(call.module, call.action)] = names
        operation, secrets = names
        return (operation if operation is not None else self._operation_name(call)), secrets

    def _operation_name(self, call: Call) -> str:
        if self._policy is None:
            return f"{call.module}.{call.action}"
        return self._policy.operation_name(call.module, call.action, call.params)


class _AuditedCall:
    """One call through the audit: room for its record held before its action runs, then its record or its refusal.

    ``held`` stays 0 until ``hold`` succeeds: a call that ends with nothing held did not run, and is counted
    among the refusals instead of recorded.
    """

    __slots__ = ("auditor", "call", "guard", "held", "params_json", "started", "who")

    def __init__(self, guard: GuardedDispatcher, auditor: Auditor, call: Call) -> None:
        self.guard = guard
        self.auditor = auditor
        self.call = call
        self.params_json: str | None = None
        #: The caller's part of the audit line, made once for the hold and the record.
        self.who = auditor.caller_json(call.identity)
        self.held = 0
        self.started = time.perf_counter()

    async def run(self) -> Any:
        try:
            self.params_json = self.guard._params_json(self.call)
            result = await self.guard._dispatcher.call(self.call, before_action=self.hold)
        except PymgrError as exc:
            self.finish(exc)
            raise
        except asyncio.CancelledError:
            self.finish_quietly("cancelled")
            raise
        except Exception as exc:  # a bug in dispatch: recorded like any failure, then raised as is
            self.finish_quietly(PymgrInternalError(f"{type(exc).__name__} in dispatch"))
            raise
        self.finish(None, result)
        return result

    def hold(self) -> None:
        """Every check passed: hold room for the record, or refuse the call before it runs (``Auditor.hold``)."""
        call = self.call
        self.held = self.auditor.hold(call.identity, call.module, call.action, self.params_json, who=self.who)

    def finish(self, error: PymgrError | str | None, result: Any = None) -> None:
        """The call's record if it ran, else its refusal's count.

        Raises:
            NotRecorded: it ran and its record could not be written (``fail_closed``).
        """
        call = self.call
        operation, secrets = self.guard._names(call)
        if not self.held:
            identity = call.identity
            self.auditor.refused(
                identity_key(identity), identity.transport, operation, error or "ok", identity.person
            )
            return
        params, params_json = call.params, self.params_json
        if secrets is None or not isinstance(params, Mapping) or not secrets.isdisjoint(params):
            params, params_json = redact(params, secrets), None
        try:
            self.auditor.record(
                call.identity,
                operation=operation,
                module=call.module,
                action=call.action,
                params=params,
                error=error,
                duration_s=time.perf_counter() - self.started,
                params_json=params_json,
                who=self.who,
            )
        except Unavailable as exc:
            raise _not_recorded(call, error, result, exc) from None
        finally:
            self.auditor.release(self.held)

    def finish_quietly(self, error: PymgrError | str) -> None:
        """Finish when another exception is already on its way (it must not be replaced)."""
        try:
            self.finish(error)
        except PymgrError:
            pass  # Auditor.record has logged the failure; the original exception wins


def _not_recorded(call: Call, error: PymgrError | str | None, result: Any, exc: Unavailable) -> NotRecorded:
    """What a caller is told when its call ran but the record of it could not be written."""
    if error is None:
        how, details = "succeeded", {"ran": True, "outcome": "ok", "result": result}
    elif isinstance(error, str):
        how, details = "was cancelled", {"ran": True, "outcome": "cancelled"}
    else:
        how, details = f"failed ({error.code})", {"ran": True, "outcome": "error", "error": error.to_dict()}
    where = (exc.details or {}).get("audit_log", "the audit log")
    return NotRecorded(
        f"{call.module}.{call.action} ran and {how}, but its audit record could not be written to {where} "
        f"({(exc.details or {}).get('reason', exc.message)}); its effect stands, so do not retry it as if it had "
        "not run. No further call runs until the audit log takes records again",
        details={**details, "audit_log": where},
    )
