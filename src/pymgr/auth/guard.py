"""The security checks every transport shares, around and in front of dispatch.

Rules:
- ``GuardedDispatcher`` is the one dispatcher the daemon serves with: it
  bounds the params, lets the policy decide (``Dispatcher.authorize`` and
  ``authorize_params``), runs the call, and writes one audit line whatever
  happened (ok, error, denied, cancelled). Transports only hand it calls, so
  an action is checked and recorded the same way over every transport.
- ``EdgeGuard`` is what a transport checks before it has a call: the
  per-identity request rate (429 / legacy err_code 7), and the audit line of
  a request it refuses itself (a bad signature).
- When the audit log is broken and ``fail_closed`` is set, no call runs
  (503); a call that ran but whose line failed gets 503 too.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import pydantic_core

from pymgr.auth.audit import OUTCOME_OK, Auditor, redact, secret_params
from pymgr.auth.policy import Policy, PolicyError
from pymgr.auth.ratelimit import RateLimiter
from pymgr.auth.sources import source_of
from pymgr.core.dispatch import Call, Dispatcher, allow_all
from pymgr.core.identity import Identity
from pymgr.core.registry import Registry
from pymgr.errors import NotFound, NotRecorded, PymgrError, PymgrInternalError, RateLimited, TooLarge, Unavailable

__all__ = ["EdgeGuard", "GuardedDispatcher", "caller_key", "identity_key"]

#: Identities whose limiter key is cached (a connection's identity is one object).
_KEY_CACHE_MAX = 4096
#: Compact JSON for params pydantic-core cannot encode (``json.dumps`` with options builds one per call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


#: ``caller_key``'s cache: id() of an Identity -> (the object, its key).
_KEYS: dict[int, tuple[Identity, str]] = {}


def caller_key(identity: Identity) -> str:
    """``identity_key``, cached per Identity object (a connection's, or a Unix caller process's).

    By ``id()``, the entry holding the object so the id cannot be reused while
    cached: hashing the nine-field Identity cost 0.6 µs a request. Legacy
    identities (one object per request, never seen again) are not kept.
    """
    entry = _KEYS.get(id(identity))
    if entry is not None and entry[0] is identity:
        return entry[1]
    key = identity_key(identity)
    if identity.transport != "legacy":
        if len(_KEYS) >= _KEY_CACHE_MAX:
            _KEYS.clear()
        _KEYS[id(identity)] = (identity, key)
    return key


def identity_key(identity: Identity) -> str:
    """The key of a caller for per-identity limits: its strongest name, else its source (``source_of``)."""
    if identity.transport == "unix":
        return f"uid:{identity.uid}"
    if identity.key_id is not None:
        return f"key:{identity.key_id}"
    if identity.cert is not None:
        return f"cert:{identity.cert}"
    host = (identity.peer or "?").rsplit(":", 1)[0]
    return f"{identity.transport}:{source_of(host)}"


class GuardedDispatcher(Dispatcher):
    """A Dispatcher with the policy as its authorizer, a params bound and an audit line per call.

    Args:
        policy: decides who may call what; None allows every call (tests, benches).
        auditor: writes the lines; None writes none.
        max_params_bytes: the largest params object, as compact JSON.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        policy: Policy | None,
        auditor: Auditor | None,
        max_params_bytes: int,
        policy_factory: Callable[[Any], Policy] | None = None,
    ) -> None:
        super().__init__(registry)
        self.policy = policy
        self.auditor = auditor
        self.max_params_bytes = max_params_bytes
        self._policy_factory = policy_factory
        #: Per call in dispatch, by id() (the Call object is alive until it leaves): [its params as JSON,
        #: the bytes ``invoking`` held of the audit's reserve (0: not yet, so the call did not run)].
        self._calls: dict[int, list[Any]] = {}

    def reload_policy(self, config: Any) -> list[str]:
        """Build the policy of ``config`` and swap it in (``service/reload.py``'s hook); the changes, for the log.

        Calls in flight finish under the policy they started with; every call after this uses the new one.

        Raises:
            PolicyError: the new policy does not build (nothing changed), or this dispatcher has no factory.
        """
        if self._policy_factory is None:
            raise PolicyError("this dispatcher was built without a policy factory: restart to change [policy]")
        old = self._policy
        new = self._policy_factory(config)
        self.policy = new
        before = "none" if old is None else f"{old.rule_count} rules"
        return [f"replaced ({before} -> {new.rule_count} rules)"]

    @property
    def policy(self) -> Policy | None:
        """Who may call what; replacing it re-binds the dispatcher's hooks and drops what was cached from it."""
        return self._policy

    @policy.setter
    def policy(self, policy: Policy | None) -> None:
        self._policy = policy
        self.authorize = allow_all if policy is None else policy.authorize
        self.authorize_params = None if policy is None else policy.authorize_params
        #: Per (module, action): the audit's operation name (None: it depends on the params) and
        #: the secret parameter names; only for actions the registry has (a bounded set).
        self._known_names: dict[tuple[str, str], tuple[str | None, frozenset[str]]] = {}

    async def call(self, call: Call) -> Any:
        """Run one call, as ``Dispatcher.call``, bounded and audited.

        Raises:
            TooLarge: the params are larger than ``max_params_bytes``.
            Unavailable: the call's record could not be written, so it did not run (``fail_closed``).
            NotRecorded: the call ran but its record could not be written (``fail_closed``).
            PymgrError: whatever dispatch raised.
        """
        auditor = self.auditor
        if auditor is None:
            self._params_json(call)
            return await super().call(call)
        started = time.perf_counter()
        params_json = None
        try:
            params_json = self._params_json(call)
            self._calls[id(call)] = [params_json, 0]
            result = await super().call(call)
        except PymgrError as exc:
            self._finish(call, started, exc, params_json)
            raise
        except asyncio.CancelledError:
            self._finish_quietly(call, started, "cancelled", params_json)
            raise
        except Exception as exc:  # a bug in dispatch: recorded like any failure, then raised as is
            self._finish_quietly(call, started, PymgrInternalError(f"{type(exc).__name__} in dispatch"), params_json)
            raise
        self._finish(call, started, None, params_json, result)
        return result

    def invoking(self, call: Call) -> None:
        """Every check passed: hold room for the call's record, or refuse it before it runs.

        Raises:
            Unavailable: the record could not be written (``Auditor.hold``).
        """
        auditor = self.auditor
        if auditor is None:
            return
        entry = self._calls.get(id(call))
        if entry is None:
            raise PymgrInternalError(f"{call.module}.{call.action} reached its action without passing the guard")
        entry[1] = auditor.hold(call.identity, call.module, call.action, entry[0])

    def _finish(
        self, call: Call, started: float, error: PymgrError | str | None, params_json: str | None, result: Any = None
    ) -> None:
        """The call's record if it ran, else its refusal's count.

        Raises:
            NotRecorded: it ran and its record could not be written (``fail_closed``).
        """
        entry = self._calls.pop(id(call), None)
        held = 0 if entry is None else entry[1]
        auditor = self.auditor
        if auditor is None:
            return
        if not held:
            auditor.refused(caller_key(call.identity), call.identity.transport, self._names(call)[0], error or "ok")
            return
        try:
            self._record(call, started, error, params_json)
        except Unavailable as exc:
            raise _not_recorded(call, error, result, exc) from None
        finally:
            auditor.release(held)

    def _finish_quietly(self, call: Call, started: float, error: PymgrError | str, params_json: str | None) -> None:
        """Finish when another exception is already on its way (it must not be replaced)."""
        try:
            self._finish(call, started, error, params_json)
        except PymgrError:
            pass  # Auditor.record has logged the failure; the original exception wins

    def _params_json(self, call: Call) -> str | None:
        """The params as compact JSON (reused by the audit line), bounded by ``max_params_bytes``.

        Raises:
            TooLarge: naming the size and the limit.
        """
        try:
            # pydantic-core's encoder: the same compact UTF-8 JSON as _ENCODER for what JSON can carry
            # (NaN, 1e+16, non-ASCII, str() of unknown types too) at a tenth of the cost, already as bytes.
            data = pydantic_core.to_json(call.params, fallback=str)
        except ValueError:  # bytes that are not UTF-8, a cycle: the json module's answer, so nothing escapes the bound
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

    def _record(self, call: Call, started: float, error: PymgrError | str | None, params_json: str | None) -> None:
        auditor = self.auditor
        if auditor is None:
            return
        # One lookup for both names (was an f-string key and a tuple key, 1 µs a call); _names without its call.
        names = self._known_names.get((call.module, call.action))
        operation, secrets = self._names_of(call) if names is None else names
        if operation is None:
            operation = self._operation_name(call)
        params = call.params
        if secrets is not None and (type(params) is dict or isinstance(params, Mapping)) and secrets.isdisjoint(params):
            if error is None and params_json is not None:  # the usual call: its line from the JSON at hand
                auditor.record_json(call.identity, operation, call.module, call.action, params_json, OUTCOME_OK,
                                    time.perf_counter() - started)
                return
        else:
            params, params_json = redact(params, secrets), None
        auditor.record(
            call.identity, operation=operation, module=call.module, action=call.action, params=params, error=error,
            duration_s=time.perf_counter() - started, params_json=params_json,
        )

    def _names(self, call: Call) -> tuple[str, frozenset[str] | None]:
        """The call's operation name and its secret parameter names (None: the action is unknown)."""
        # One lookup for both names (was an f-string key and a tuple key, 1 µs a call).
        names = self._known_names.get((call.module, call.action))
        operation, secrets = self._names_of(call) if names is None else names
        if operation is None:
            operation = self._operation_name(call)
        return operation, secrets

    def _operation_name(self, call: Call) -> str:
        policy = self._policy
        if policy is None:
            return f"{call.module}.{call.action}"
        return policy.operation_name(call.module, call.action, call.params)

    def _names_of(self, call: Call) -> tuple[str | None, frozenset[str] | None]:
        """The operation name (None when the params decide it) and the secret names; cached for known actions."""
        try:
            spec = self.registry.get(call.module, call.action)
        except NotFound:
            return self._operation_name(call), None
        policy = self._policy
        operation = None if policy is not None and policy.operation_depends_on_params(spec) else (
            self._operation_name(call)
        )
        names = (operation, secret_params(spec.params_model))
        self._known_names[(call.module, call.action)] = names
        return names


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
        key = caller_key(identity)
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
            self.auditor.refused(caller_key(identity), identity.transport, what, error)


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
