"""The policy: who may run which action. Deny by default.

Rules:
- A call is allowed only if some ``[[policy.rules]]`` entry names a subject
  the caller matches and an action pattern the call's *operation* matches.
  Nothing else allows anything: not uid 0, not the socket's mode, not the
  transport. (The daemon's own ``internal`` calls are the one exception;
  no transport can produce that identity.)
- Subjects: ``user:NAME``, ``uid:N``, ``group:NAME`` (peer credentials on the
  Unix socket), ``key:ID`` (a signed TCP request), ``cert:CN`` (a verified
  TLS client certificate), ``fleet:ID`` (a fleet job signed with that key), ``legacy`` (the 2014 line protocol), ``owner``
  (the daemon's own uid, on the Unix socket) and ``any`` (every caller
  identified by the kernel, a key or a certificate; never ``legacy``);
  for a person a delegate acts for, only ``NAMESPACE:NAME`` and ``role:NAME``.
- An operation is ``module.action``, except for the actions of the task
  module (recognised by what they are, the functions the daemon names in
  ``task_operations``, never by a module name a command could take): its
  read-only actions are ``tasks.read``; ``start`` is ``tasks.start:TYPE``,
  ``stop`` and ``logs`` are ``tasks.stop:TYPE`` and ``tasks.logs:TYPE``
  (the type of the task the id names). A typed operation whose type cannot
  be determined is denied; one whose id names no task is refused with 404
  before the action runs (so a task started meanwhile under that id is
  never touched).
- Patterns are fnmatch-style (``*``, ``?``, ``[...]``), case-sensitive.
  ``PATTERN:read`` matches only read-only operations (``*:read`` is a
  read-only role in one line). An ``@action(explicit=True)`` (``audit.read``)
  is matched only by a pattern naming its module (``audit.*``), never ``*``.
- An action's ``@action(allow=[...])`` is a requirement the config can
  tighten but not silently loosen: the caller must match it too, unless the
  allowing rule says ``override = true`` (logged at start).
- A malformed rule or an unknown subject is a config error naming the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from pymgr.auth._policynotes import delegate_notes, unknown_name_notes
from pymgr.auth._policysyntax import (
    TYPED_TASK_OPS,
    Operation,
    Pattern,
    Subject,
    describe_identity,
    parse_pattern,
    parse_subject,
    subject_matches,
    unknown_key,
)
from pymgr.auth.delegation import Delegation
from pymgr.auth.policyconfig import PolicyConfig, PolicyRule
from pymgr.core.identity import Identity
from pymgr.core.registry import ActionSpec, Registry
from pymgr.errors import Forbidden, NotFound

__all__ = [
    "Operation",
    "Policy",
    "PolicyConfig",
    "PolicyError",
    "PolicyRule",
    "Subject",
    "describe_identity",
    "parse_pattern",
    "parse_subject",
]

#: A task type name that no configured type can have: it matches only
#: wildcard patterns, so "may start some type" is one fnmatch per rule.
_ANY_TYPE = "\x00any"
#: Decisions cached per (caller's names, action, operation); cleared when full.
_CACHE_MAX = 4096
#: Stands for the caller in a cached denial: the cache is shared by every
#: connection of a caller, and the message names the one asking now.
_WHO = "\x00who\x00"


class PolicyError(ValueError):
    """The policy cannot be built (a rule names an unknown key, a bad allow entry)."""


# --- the compiled policy ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    label: str
    subjects: tuple[Subject, ...]
    patterns: tuple[Pattern, ...]
    override: bool

    def allows(self, op: Operation) -> bool:
        return any(p.matches(op) for p in self.patterns)


def _label(index: int, rule: PolicyRule) -> str:
    return f"policy rule #{index + 1}" + (f" ({rule.name!r})" if rule.name else "")


class Policy:
    """The compiled rules; ``authorize`` and ``authorize_params`` are the dispatcher's hooks.

    Args:
        config: the ``[policy]`` section.
        registry: every served action (for code requirements and start-up notes).
        key_ids: the configured HMAC key ids (``key:ID`` must name one).
        fleet_key_ids: the ``[[fleet.keys]]`` ids (``fleet:ID`` must name one).
        task_types: the configured task type names.
        task_type_of: the type of a task by id; raises ``NotFound`` when no task has the id.
        task_operations: the task module's actions (their functions) and the
            operation each is: ``tasks.read``, ``tasks.start``, ``tasks.stop``
            or ``tasks.logs``. Any other action is ``module.action``.
        owner_uid: the daemon's own uid (the ``owner`` subject).

    Raises:
        PolicyError: a rule names an unknown key, or an action's ``allow`` entry is malformed.
    """

    def __init__(
        self,
        config: PolicyConfig,
        registry: Registry,
        *,
        key_ids: Iterable[str] = (),
        fleet_key_ids: Iterable[str] = (),
        task_types: Iterable[str] = (),
        task_type_of: Callable[[int], str | None] = lambda task_id: None,
        task_operations: Mapping[Callable[..., Any], str] | None = None,
        owner_uid: int,
    ) -> None:
        self._registry = registry
        self._task_operations = dict(task_operations or {})
        self._task_types = (*task_types, _ANY_TYPE)
        self._task_type_of = task_type_of
        self._owner_uid = owner_uid
        namespaces = config.namespaces()
        self._rules = tuple(
            _compile(i, r, {"key": frozenset(key_ids), "fleet": frozenset(fleet_key_ids)}, namespaces)
            for i, r in enumerate(config.rules)
        )
        #: Who may act for whom (``X-Pymgr-On-Behalf-Of``): read per request by the HTTP guard.
        self.delegation = Delegation(config, owner_uid)
        self._delegates = tuple(config.delegates)
        self._specs = _all_specs(registry)
        self._required = {spec.qualname: _requirement(spec) for spec in self._specs if spec.options.allow}
        self._cache: dict[tuple[tuple[Any, ...], str, str], str | None] = {}
        #: Per action (qualname): its Operation, or its typed kind ("tasks.start").
        self._ops: dict[str, Operation | str] = {}

    # --- dispatcher hooks -----------------------------------------------

    def authorize(self, identity: Identity, spec: ActionSpec) -> None:
        """Before validation: may the caller run this action at all?

        Raises:
            Forbidden: naming the caller, the operation and what would allow it.
        """
        op = self._op(spec)
        if isinstance(op, Operation):
            self._check(identity, spec, op)
            return
        kind = op
        # A typed task operation: the type is known only after validation;
        # here the caller must hold it for at least one type.
        denial = None
        for task_type in self._task_types:
            denial = self._decide(identity, spec, Operation(f"{kind}:{task_type}", spec.options.read_only))
            if denial is None:
                return
        op_name = f"{kind}:TYPE"
        who = describe_identity(identity)
        message = (denial or f"no rule allows {op_name}").replace(_WHO, who)
        raise Forbidden(message, details={"operation": op_name, "caller": who})

    def authorize_params(self, identity: Identity, spec: ActionSpec, params: BaseModel) -> None:
        """After validation: the task type of ``tasks.start|stop|logs``.

        Raises:
            Forbidden: the caller may not do this to a task of this type.
        """
        kind = self._op(spec)
        if isinstance(kind, Operation):
            return
        task_type = self._type_from(kind, params)  # NotFound: no such task, refused before the action runs
        if task_type is None:
            who = describe_identity(identity)
            raise Forbidden(
                f"{kind} is decided by the task type, and the type of this call cannot be determined; "
                f"denied to {who}",
                details={"operation": f"{kind}:?", "caller": who},
            )
        self._check(identity, spec, Operation(f"{kind}:{task_type}", spec.options.read_only))

    # --- for the module list -------------------------------------------

    @property
    def task_types(self) -> tuple[str, ...]:
        """The configured task type names: what ``tasks.start|stop|logs:TYPE`` can name."""
        return self._task_types[:-1]

    def allows(self, identity: Identity, spec: ActionSpec, task_type: str | None = None) -> bool:
        """Whether the caller may call the action: ``authorize``'s decision (and cache), without raising.

        Args:
            task_type: for an action decided by task type (``operation_depends_on_params``), the
                type to ask about; None asks what ``authorize`` does, whether some type is allowed.
                Other actions ignore it.
        """
        op = self._op(spec)
        if isinstance(op, Operation):
            return self._decide(identity, spec, op) is None
        types = self._task_types if task_type is None else (task_type,)
        read_only = spec.options.read_only
        return any(self._decide(identity, spec, Operation(f"{op}:{t}", read_only)) is None for t in types)

    # --- for audit and start-up -----------------------------------------

    def operation_depends_on_params(self, spec: ActionSpec) -> bool:
        """Whether the action's operation names a task type, known only from its params."""
        return not isinstance(self._op(spec), Operation)

    def operation_name(self, module: str, action: str, params: Any) -> str:
        """The operation of a call as the audit log names it, from raw params (best effort)."""
        op = self._ops.get(f"{module}.{action}")
        if op is None:
            try:
                op = self._op(self._registry.get(module, action))
            except NotFound:  # the audit line still names what was asked
                return f"{module}.{action}"
        if isinstance(op, Operation):
            return op.name
        kind = op
        task_type = None
        if isinstance(params, dict):
            if kind == "tasks.start":
                task_type = params.get("type") if isinstance(params.get("type"), str) else None
            else:
                try:
                    task_type = self._type_by_id(params.get("id"))
                except NotFound:
                    task_type = None
        return f"{kind}:{task_type if task_type is not None else '?'}"

    @property
    def rule_count(self) -> int:
        """How many rules the policy has (for the log)."""
        return len(self._rules)

    def startup_notes(self) -> list[str]:
        """Warnings for the start-up log: overrides, patterns that match nothing, unknown names, delegates."""
        notes = []
        for rule in self._rules:
            notes += self._override_notes(rule) + self._unmatched_notes(rule)
            notes += unknown_name_notes(rule.label, rule.subjects)
            notes += delegate_notes(rule.label, rule.subjects, self._delegates)
        return notes

    # --- internals ------------------------------------------------------

    def _op(self, spec: ActionSpec) -> Operation | str:
        """The action's operation, or its typed kind when the operation needs the params."""
        op = self._ops.get(spec.qualname)
        if op is None:
            kind = self._kind(spec)
            op = self._ops[spec.qualname] = kind if kind in TYPED_TASK_OPS else self._untyped(spec)
        return op

    def _kind(self, spec: ActionSpec) -> str | None:
        """The task operation the action is, by its function (bound methods compare by theirs)."""
        return self._task_operations.get(getattr(spec.func, "__func__", spec.func))

    def _untyped(self, spec: ActionSpec) -> Operation:
        """The operation of an action that needs no params to name it."""
        if self._kind(spec) == "tasks.read":
            return Operation("tasks.read", True)
        return Operation(spec.qualname, spec.options.read_only, spec.options.explicit)

    def _check(self, identity: Identity, spec: ActionSpec, op: Operation) -> None:
        denial = self._decide(identity, spec, op)
        if denial is not None:
            who = describe_identity(identity)
            raise Forbidden(denial.replace(_WHO, who), details={"operation": op.name, "caller": who})

    def _decide(self, identity: Identity, spec: ActionSpec, op: Operation) -> str | None:
        """None if allowed, else the denial message with ``_WHO`` for the caller (cached).

        The cache key leaves out what no subject looks at (pid, peer address),
        so every connection of the same caller shares one entry.
        """
        i = identity
        who = (i.transport, i.uid, i.user, i.groups, i.key_id, i.cert, i.fleet_key, i.person, i.roles)
        key = (who, spec.qualname, op.name)
        try:
            return self._cache[key]
        except KeyError:
            pass
        denial = self._compute(identity, spec, op)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = denial
        return denial

    def _compute(self, identity: Identity, spec: ActionSpec, op: Operation) -> str | None:
        if identity.transport == "internal":
            return None
        who = _WHO
        if identity.person is None and (refusal := self.delegation.own_call_refusal(identity, who)):
            return refusal
        allowing = [r for r in self._rules if r.allows(op) and self._is(identity, r.subjects)]
        if not allowing:
            shown = op.name.replace(_ANY_TYPE, "TYPE")
            return f"the policy allows {who} no {shown}; an admin can add it to [[policy.rules]]"
        required = self._required.get(spec.qualname)
        if required is None or self._is(identity, required) or any(r.override for r in allowing):
            return None
        needs = ", ".join(map(str, required))
        return (
            f"{spec.qualname} may only be called by {needs} (required by the action itself); {who} is none of "
            "them, and a policy rule lifts that only with override = true"
        )

    def _is(self, identity: Identity, subjects: Sequence[Subject]) -> bool:
        return any(subject_matches(s, identity, self._owner_uid) for s in subjects)

    def _type_from(self, kind: str, params: BaseModel) -> str | None:
        if kind == "tasks.start":
            value = getattr(params, "type", None)
            return value if isinstance(value, str) else None
        return self._type_by_id(getattr(params, "id", None))

    def _type_by_id(self, task_id: Any) -> str | None:
        # A run id is below 2**63 (19 digits); int() refuses over 4,300 with a ValueError.
        if isinstance(task_id, str) and task_id.isascii() and task_id.isdigit() and len(task_id) <= 19:
            task_id = int(task_id)
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            return None
        return self._task_type_of(task_id)

    def _override_notes(self, rule: _Rule) -> list[str]:
        if not rule.override:
            return []
        notes = []
        for spec in self._specs:
            if spec.qualname in self._required and any(rule.allows(op) for op in self._ops_of(spec)):
                needs = ", ".join(map(str, self._required[spec.qualname]))
                who = ", ".join(map(str, rule.subjects))
                notes.append(
                    f"{rule.label} has override = true: it lets {who} call {spec.qualname}, "
                    f"which its code restricts to {needs}"
                )
        if not notes:
            notes.append(f"{rule.label} has override = true but loosens no action's own requirement")
        return notes

    def _unmatched_notes(self, rule: _Rule) -> list[str]:
        ops = [op for spec in self._specs for op in self._ops_of(spec)]
        return [
            f"{rule.label}: action pattern {p.text!r} matches no action this daemon serves"
            for p in rule.patterns
            if not any(p.matches(op) for op in ops)
        ]

    def _ops_of(self, spec: ActionSpec) -> list[Operation]:
        kind = self._kind(spec)
        if kind not in TYPED_TASK_OPS:
            return [self._untyped(spec)]
        return [Operation(f"{kind}:{t}", spec.options.read_only) for t in self._task_types]


def _all_specs(registry: Registry) -> list[ActionSpec]:
    return [registry.get(m["name"], a["name"]) for m in registry.describe() for a in m["actions"]]


def _requirement(spec: ActionSpec) -> tuple[Subject, ...]:
    try:
        return tuple(parse_subject(entry) for entry in spec.options.allow or ())
    except ValueError as exc:
        raise PolicyError(
            f"action {spec.qualname}: @action(allow=...) entry is not a subject: {exc}"
        ) from None


def _compile(
    index: int, rule: PolicyRule, key_ids: Mapping[str, frozenset[str]], namespaces: frozenset[str]
) -> _Rule:
    label = _label(index, rule)
    subjects = tuple(parse_subject(s, namespaces) for s in rule.subjects)
    for subject in subjects:
        unknown = unknown_key(subject, key_ids)
        if unknown is not None:
            raise PolicyError(f"{label}: {unknown}")
    return _Rule(label, subjects, tuple(parse_pattern(p) for p in rule.actions), rule.override)
