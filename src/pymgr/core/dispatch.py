"""One dispatch path from a request to a result, for every transport.

Rules:
- Order: look up, authorize, validate, authorize the params (when a rule
  depends on them, e.g. a task's type), ``before_action`` (the caller's last
  word before the action runs, e.g. that the call can be recorded), call.
  A caller who may not call an action learns nothing from its parameter errors.
- Sync actions run in the default executor so they never block the loop.
- An action's own ``PymgrError`` passes through; any other exception becomes
  ``ActionFailed`` (logged with its traceback); cancellation propagates.
- The result leaves as JSON-ready data, so every transport encodes the same.
- With ``metrics``, every call is counted by transport, module, action and
  outcome ("ok", the error's code, "cancelled"; an action that raised is
  "action_failed", so "internal" means pymgr itself), with its duration; an
  action the registry lacks counts as ``_unknown`` (callers choose names).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import pydantic
import pydantic_core

from pymgr.core.identity import Identity
from pymgr.core.registry import ActionSpec, Registry
from pymgr.errors import ActionFailed, ParamsInvalid, PymgrError
from pymgr.metrics import ACTION_FAILED, UNKNOWN, Metrics

log = logging.getLogger("pymgr.dispatch")

#: Called before validation; raises Unauthenticated/Forbidden to refuse.
Authorizer = Callable[[Identity, ActionSpec], None]
#: Called after validation with the validated params, for rules that depend on
#: them (``tasks.start:TYPE``); raises Forbidden to refuse.
ParamsAuthorizer = Callable[[Identity, ActionSpec, pydantic.BaseModel], None]
#: Called once every check passed, just before the action runs; raises a PymgrError to refuse the call.
BeforeAction = Callable[[], None]


@dataclass(frozen=True, slots=True)
class Call:
    """One request to run an action, whatever transport it came by."""

    module: str
    action: str
    params: Mapping[str, Any]
    identity: Identity


class CallHandler(Protocol):
    """What an edge hands its calls to: a ``Dispatcher``, or one with checks composed around it."""

    registry: Registry

    async def call(self, call: Call) -> Any: ...


def allow_all(identity: Identity, spec: ActionSpec) -> None:
    """The authorizer that allows every call (a dispatcher without a policy)."""
    return None


def params_error(qualname: str, exc: pydantic.ValidationError) -> ParamsInvalid:
    """Turn pydantic's errors into one message naming field, value and rule."""
    errors = exc.errors(include_url=False, include_context=False)
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err["loc"]) or "(params)"
        got = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
        parts.append(f"{where}: {err['msg']}{got}")
    details = [
        {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"], "type": e["type"]} for e in errors
    ]
    return ParamsInvalid(f"bad params for {qualname}: " + "; ".join(parts), details={"errors": details})


class Dispatcher:
    """Runs calls against a registry.

    Args:
        authorize: decides before validation whether the caller may call the action.
        authorize_params: decides after validation, from the params.
        metrics: counts every call (None: nothing is counted).
    """

    def __init__(
        self,
        registry: Registry,
        authorize: Authorizer = allow_all,
        authorize_params: ParamsAuthorizer | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.registry = registry
        self.authorize = authorize
        self.authorize_params = authorize_params
        self.metrics = metrics

    async def call(self, call: Call, *, before_action: BeforeAction | None = None) -> Any:
        """Run one action.

        Args:
            before_action: called once every check passed, just before the action runs; what it
                raises refuses the call like any check's refusal.

        Returns:
            The action's result as JSON-ready data.

        Raises:
            PymgrError: NotFound, Unauthenticated, Forbidden, ParamsInvalid,
                ActionFailed, or whatever PymgrError the action raised.
        """
        metrics = self.metrics
        if metrics is None:
            return await self._call(call, before_action)
        started = time.perf_counter()
        outcome = "internal"
        try:
            result = await self._call(call, before_action)
            outcome = "ok"
            return result
        except PymgrError as exc:
            # An action that raised and a bug in pymgr share the wire code "internal"; an operator
            # alerting on the daemon's own faults needs them apart.
            outcome = ACTION_FAILED if isinstance(exc, ActionFailed) else exc.code
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            known = self.registry.has(call.module, call.action)
            metrics.request(
                call.identity.transport,
                call.module if known else UNKNOWN,
                call.action if known else UNKNOWN,
                outcome,
                time.perf_counter() - started,
            )

    async def _call(self, call: Call, before_action: BeforeAction | None) -> Any:
        spec = self.registry.get(call.module, call.action)
        self.authorize(call.identity, spec)
        if not isinstance(call.params, Mapping):
            raise ParamsInvalid(
                f"params for {spec.qualname} must be an object of name: value, not "
                f"{type(call.params).__name__}"
            )
        try:
            params = spec.params_model.model_validate(dict(call.params))
        except pydantic.ValidationError as exc:
            raise params_error(spec.qualname, exc) from None
        if self.authorize_params is not None:
            self.authorize_params(call.identity, spec, params)
        # The model's (name, value) pairs, its extra params among them. Not dict(params): dict() first
        # asks the model for a `keys` attribute, which pydantic refuses by raising, 6 µs a call.
        kwargs = dict(iter(params))
        if spec.identity_param is not None:
            kwargs[spec.identity_param] = call.identity
        if before_action is not None:
            before_action()
        result = await self._invoke(spec, kwargs)
        try:
            return pydantic_core.to_jsonable_python(result)
        except pydantic_core.PydanticSerializationError as exc:
            raise ActionFailed(f"action {spec.qualname} returned a value that is not JSON: {exc}") from exc

    async def _invoke(self, spec: ActionSpec, kwargs: dict[str, Any]) -> Any:
        try:
            if spec.is_async:
                return await spec.func(**kwargs)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, functools.partial(spec.func, **kwargs))
        except PymgrError:
            raise
        except Exception as exc:
            log.exception("action %s raised", spec.qualname)
            raise ActionFailed(
                f"action {spec.qualname} failed: {type(exc).__name__}: {exc}",
                details={"exception": type(exc).__name__},
            ) from exc
