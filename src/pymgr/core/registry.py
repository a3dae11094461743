"""Modules, actions and the registry that holds them.

Rules:
- An action is a method marked with ``@action``. Its parameters come from its
  type hints; a pydantic model is built from them once, at registration, and
  gives both validation and the JSON Schema clients see.
- A parameter annotated ``Identity`` is not a parameter: dispatch passes the
  caller's identity there, and the schema never shows it.
- The return annotation is the result's schema (``ActionSpec.result_schema``):
  pydantic's ``TypeAdapter`` makes it, as the params model makes theirs. An
  action without one has an open schema (any JSON).
- A duplicate module name is an error at start-up, never a silent override.
"""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, create_model

from pymgr.core.identity import Identity
from pymgr.errors import NotFound

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound="type[Module]")

_ACTION_ATTR = "__pymgr_action__"


class Params(BaseModel):
    """Base for structured parameter types: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class ActionOptions:
    """What ``@action`` recorded on a method."""

    name: str
    allow: tuple[str, ...] | None
    read_only: bool
    #: Only a rule naming the module grants it (``audit.read``, ``audit.*``): never ``*`` nor ``*:read``.
    explicit: bool = False
    #: Hard to undo (a reboot, a delete, a kill): the listing says so, and people's front ends (the
    #: console) ask for a confirmation first. A hint to clients; the policy alone decides who may call.
    dangerous: bool = False


def action(
    func: F | None = None,
    *,
    name: str | None = None,
    allow: Iterable[str] | None = None,
    read_only: bool = False,
    explicit: bool = False,
    dangerous: bool = False,
) -> Any:
    """Mark a method of a ``Module`` as an action callers may invoke.

    Args:
        name: the action's public name; defaults to the method's name.
        allow: identities this action allows by default (``"user:root"``,
            ``"group:www-data"``); policy in the config may tighten it.
        read_only: the action changes nothing (read-only roles may call it).
        explicit: only a policy pattern that names the module grants it (``audit.read``, ``audit.*``);
            a wildcard over modules (``*``, ``*:read``, ``*.read``) never does. For actions whose
            reach goes beyond what a read-anything role was written for (the audit log).
        dangerous: the action is hard to undo (a reboot, a delete, a kill): ``GET /v1/modules`` marks
            it, and the console asks the person to confirm (and, after a while, for their password)
            before it calls. It grants and refuses nothing: that stays the policy's.
    """

    def mark(f: F) -> F:
        if not callable(f):
            raise TypeError(f"@action decorates a method, not {f!r}")
        options = ActionOptions(
            name=name or f.__name__,
            allow=tuple(allow) if allow is not None else None,
            read_only=read_only,
            explicit=explicit,
            dangerous=dangerous,
        )
        setattr(f, _ACTION_ATTR, options)
        return f

    return mark(func) if func is not None else mark


@dataclass
class ModuleContext:
    """What the daemon hands a module: shared services and its settings."""

    #: The task manager, when the daemon runs one.
    tasks: Any = None
    #: This module's table from the config (``[modules.settings.NAME]``).
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: The daemon's ``pymgr.metrics.Metrics``, when it counts.
    metrics: Any = None


class Module:
    """Base class of a module: a named group of actions.

    Subclasses set ``name`` and mark methods with ``@action``.
    """

    name: ClassVar[str] = ""

    def __init__(self, context: ModuleContext | None = None) -> None:
        self.context = context if context is not None else ModuleContext()


_registered: list[type[Module]] = []


def register(cls: M) -> M:
    """Class decorator: offer this module to a daemon that imports its file.

    A config entry ``"package.file"`` under ``[modules] enabled`` imports the
    file and adds every module class in it that was decorated this way.
    """
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise TypeError(f"@register decorates a pymgr.Module subclass, not {cls!r}")
    if cls not in _registered:
        _registered.append(cls)
    return cls


def registered_in(python_module: str) -> list[type[Module]]:
    """The ``@register``-ed classes defined in one imported Python module."""
    return [cls for cls in _registered if cls.__module__ == python_module]


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One action of one module instance, ready to call."""

    module: str
    name: str
    func: Callable[..., Any]
    params_model: type[BaseModel]
    identity_param: str | None
    is_async: bool
    doc: str
    options: ActionOptions
    #: The return annotation (``inspect.Signature.empty`` when the action has none).
    result_type: Any = inspect.Signature.empty
    #: ``module.name``, made once: the policy and the dispatcher read it on every call.
    qualname: str = field(init=False, repr=False, compare=False)
    #: The params' JSON Schema, made at its first use: pydantic builds it anew at each
    #: ``model_json_schema()`` call, 0.3-0.5 ms an action, which was four fifths of a
    #: ``GET /v1/modules`` (the web console asks for one with every tasks page).
    _params_schema: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "qualname", f"{self.module}.{self.name}")  # frozen: set once here

    def describe(self) -> dict[str, Any]:
        """The action as ``GET /v1/modules`` shows it."""
        return {
            "name": self.name,
            "doc": self.doc,
            "read_only": self.options.read_only,
            "dangerous": self.options.dangerous,
            "params": self.params_schema(),
        }

    def params_schema(self) -> dict[str, Any]:
        """The JSON Schema of the action's parameters (a copy: the caller may change it)."""
        schema = self._params_schema
        if schema is None:
            schema = self.params_model.model_json_schema()
            object.__setattr__(self, "_params_schema", schema)  # frozen: set once here
        return copy.deepcopy(schema)

    def result_schema(self, ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
        """The JSON Schema of the action's result, from its return annotation; ``{}`` (any JSON) without one.

        Models it refers to are under ``$defs``, named as ``ref_template`` says (the HTTP edge
        moves them to ``components/schemas``).
        """
        if self.result_type is inspect.Signature.empty:
            return {}
        return TypeAdapter(self.result_type).json_schema(ref_template=ref_template, mode="serialization")


class RegistryError(Exception):
    """A module cannot be registered (duplicate name, bad action signature)."""


def _params_model(module: str, method: Callable[..., Any]) -> tuple[type[BaseModel], str | None]:
    """Build the pydantic model of a method's parameters from its type hints."""
    hints = typing.get_type_hints(method, include_extras=True)
    fields: dict[str, Any] = {}
    identity_param = None
    extra: Literal["forbid", "allow"] = "forbid"
    for param in inspect.signature(method).parameters.values():
        annotation = hints.get(param.name, Any)
        if param.kind is param.VAR_POSITIONAL:
            raise RegistryError(
                f"{module}.{method.__name__}: *{param.name} is not allowed; "
                "actions take named parameters only"
            )
        if param.kind is param.VAR_KEYWORD:
            extra = "allow"
            continue
        if annotation is Identity:
            identity_param = param.name
            continue
        # A default may be a plain value or a pydantic Field(...): both fit here.
        fields[param.name] = (annotation, ... if param.default is param.empty else param.default)
    model = create_model(
        f"{module}.{method.__name__}",
        # A float param is finite: "nan" or "1e999" from a legacy key:value line is refused, not inf/nan.
        __config__=ConfigDict(extra=extra, allow_inf_nan=False),
        **fields,
    )
    return model, identity_param


def _action_specs(module: Module) -> list[ActionSpec]:
    specs = []
    for attr in dir(type(module)):
        options = getattr(getattr(type(module), attr, None), _ACTION_ATTR, None)
        if not isinstance(options, ActionOptions):
            continue
        method = getattr(module, attr)
        model, identity_param = _params_model(module.name, method)
        hints = typing.get_type_hints(method, include_extras=True)
        specs.append(
            ActionSpec(
                module=module.name,
                name=options.name,
                func=method,
                params_model=model,
                identity_param=identity_param,
                is_async=inspect.iscoroutinefunction(method),
                doc=inspect.getdoc(method) or "",
                options=options,
                result_type=hints.get("return", inspect.Signature.empty),
            )
        )
    return specs


class Registry:
    """Every module the daemon serves, by name."""

    def __init__(self) -> None:
        self._modules: dict[str, Module] = {}
        self._actions: dict[str, dict[str, ActionSpec]] = {}

    def add(self, module: Module) -> None:
        """Register a module instance.

        Raises:
            RegistryError: the name is empty or already taken, or an action's
                signature cannot become a parameter schema.
        """
        name = module.name
        if not name or not isinstance(name, str):
            raise RegistryError(
                f"{type(module).__qualname__} has no `name`; set a class attribute name = '...'"
            )
        if name in self._modules:
            other = type(self._modules[name])
            raise RegistryError(
                f"duplicate module name {name!r}: {type(module).__module__}.{type(module).__qualname__} "
                f"and {other.__module__}.{other.__qualname__}; rename one or remove it from [modules] enabled"
            )
        specs: dict[str, ActionSpec] = {}
        for spec in _action_specs(module):
            if spec.name in specs:
                raise RegistryError(f"module {name!r} defines action {spec.name!r} twice")
            specs[spec.name] = spec
        self._modules[name] = module
        self._actions[name] = specs

    def get(self, module: str, action: str) -> ActionSpec:
        """Look up an action.

        Raises:
            NotFound: with the names that do exist.
        """
        actions = self._actions.get(module)
        if actions is None:
            raise NotFound(
                f"no module named {module!r}; modules: {', '.join(sorted(self._actions)) or '(none)'}",
                details={"module": module, "modules": sorted(self._actions)},
            )
        spec = actions.get(action)
        if spec is None:
            raise NotFound(
                f"module {module!r} has no action {action!r}; actions: "
                f"{', '.join(sorted(actions)) or '(none)'}",
                details={"module": module, "action": action, "actions": sorted(actions)},
            )
        return spec

    def __contains__(self, module: str) -> bool:
        return module in self._modules

    def actions(self, module: str) -> list[ActionSpec]:
        """The actions of ``module``, by name; [] for no such module."""
        return [spec for _, spec in sorted(self._actions.get(module, {}).items())]

    def has(self, module: str, action: str) -> bool:
        """True if ``module`` has an action ``action`` (no error to build, unlike ``get``)."""
        actions = self._actions.get(module)
        return actions is not None and action in actions

    def names(self) -> list[str]:
        return sorted(self._modules)

    def module(self, name: str) -> Module:
        """The module instance registered as ``name`` (a config reload updates its settings).

        Raises:
            KeyError: no module has this name; ``names()`` lists them.
        """
        return self._modules[name]

    def describe(self) -> list[dict[str, Any]]:
        """Every module with its actions, docs and parameter schemas."""
        return [
            {
                "name": name,
                "doc": inspect.getdoc(type(self._modules[name])) or "",
                "actions": [spec.describe() for _, spec in sorted(self._actions[name].items())],
            }
            for name in sorted(self._modules)
        ]
