"""The module list as one caller sees it: every action marked with whether the policy lets that caller call it.

Rules:
- The marks are ``Policy.allows``: the decision ``authorize`` makes for a call, from the same
  code and cache; nothing here decides. The core's ``Registry.describe`` stays policy-free.
- An action the policy decides by task type (``tasks.start|stop|logs``) also carries
  ``task_types``: each configured type and whether the caller may do that operation on a task
  of it. Its ``allowed`` is what ``authorize`` checks before the params are known: some type is.
  A type the caller may not use is listed only to a caller who may read the types anyway
  (the module's ``types`` or ``list`` action): the listing tells nobody a name it could not learn.
- Without a policy (a dispatcher built without one, as in tests and benches) every call is
  allowed, so every action is marked allowed and none carries ``task_types``.
- ``only_allowed`` drops what the caller may not call: actions, task types, and modules left
  with no action.
- Listing is not a call: it runs no action, so it is neither audited nor counted as one.
"""

from __future__ import annotations

from typing import Any

from pymgr.auth.policy import Policy
from pymgr.core.identity import Identity
from pymgr.core.registry import Registry

__all__ = ["list_modules"]


def list_modules(
    registry: Registry, policy: Policy | None, identity: Identity, *, only_allowed: bool = False
) -> list[dict[str, Any]]:
    """``Registry.describe`` with each action marked ``"allowed": true|false`` for ``identity``.

    Args:
        policy: the policy in force; None allows everything.
        only_allowed: list only the actions (and task types) ``identity`` may call.

    Returns:
        The modules, each with its actions; a typed task action also has ``task_types``.
    """
    modules = []
    for module in registry.describe():
        actions = [
            _marked(registry, policy, identity, module["name"], a, only_allowed) for a in module["actions"]
        ]
        if only_allowed:
            actions = [a for a in actions if a["allowed"]]
            if not actions:
                continue
        modules.append({**module, "actions": actions})
    return modules


def _marked(
    registry: Registry,
    policy: Policy | None,
    identity: Identity,
    module: str,
    action: dict[str, Any],
    only_allowed: bool,
) -> dict[str, Any]:
    if policy is None:
        return {**action, "allowed": True}
    spec = registry.get(module, action["name"])
    marked = {**action, "allowed": policy.allows(identity, spec)}
    if policy.operation_depends_on_params(spec):
        show_denied = not only_allowed and _may_read_types(registry, policy, identity, module)
        by_type = {t: policy.allows(identity, spec, t) for t in policy.task_types}
        marked["task_types"] = {t: ok for t, ok in by_type.items() if ok or show_denied}
    return marked


def _may_read_types(registry: Registry, policy: Policy, identity: Identity, module: str) -> bool:
    """The caller may learn every task type's name anyway: it may list the types or the runs."""
    readers = (registry.get(module, name) for name in ("types", "list") if registry.has(module, name))
    return any(policy.allows(identity, spec) for spec in readers)
