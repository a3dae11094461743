"""Checking what callers send the task manager: parameters, keys, state names.

Rules:
- Every refusal is ``ParamsInvalid`` naming the field, the bad value and
  what is expected (the valid state names, the key's length limit).
- A key starting ``fleet:`` is the fleet's: only a fleet job (transport
  ``fleet``) may start a run with one.
- Parameters are validated by the task type's pydantic model; its errors
  are turned into one message by ``core.dispatch.params_error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from pymgr.core.dispatch import params_error
from pymgr.core.identity import Identity
from pymgr.errors import ParamsInvalid
from pymgr.tasks.states import TaskState
from pymgr.tasks.tasktypes import TaskType

#: Longest idempotency key: a key names a run ("scan:1"); it is not data.
MAX_KEY_CHARS = 256
#: The keys of fleet jobs' runs (``fleet:<job id>``, ``fleet/runner.py``): a host follows the run
#: holding its job's key, so no other caller may take one (it could make a later job follow its run).
FLEET_KEY_PREFIX = "fleet:"


def validate_params(task_type: TaskType, params: Mapping[str, Any]) -> pydantic.BaseModel:
    """The type's parameter model filled in from ``params``.

    Raises:
        ParamsInvalid: not an object, or a value that does not validate.
    """
    if not isinstance(params, Mapping):
        raise ParamsInvalid(
            f"params of task type {task_type.name!r} must be an object of name: value, "
            f"not {type(params).__name__}"
        )
    try:
        return task_type.params_model.model_validate(dict(params))
    except pydantic.ValidationError as exc:
        raise params_error(f"task type {task_type.name!r}", exc) from None


def check_key(key: str | None, identity: Identity) -> None:
    """Raises ParamsInvalid unless ``key`` is None or a string of 1 to ``MAX_KEY_CHARS`` characters,
    and not in the fleet's namespace (``FLEET_KEY_PREFIX``) unless the caller is a fleet job."""
    if key is None:
        return
    if not isinstance(key, str) or not key:
        raise ParamsInvalid(f"key: must be a non-empty string or null, not {key!r}")
    if len(key) > MAX_KEY_CHARS:
        raise ParamsInvalid(f"key: must be at most {MAX_KEY_CHARS} characters, got {len(key)}")
    if key.startswith(FLEET_KEY_PREFIX) and identity.transport != "fleet":
        raise ParamsInvalid(
            f"key: {key!r} starts with {FLEET_KEY_PREFIX!r}, which only fleet jobs' runs use "
            f"({FLEET_KEY_PREFIX}<job id>); choose a key without it"
        )


def check_keys(keys: list[str | None], identity: Identity) -> None:
    """``check_key`` for each key of a ``start_many``, and no key twice (the second would take the
    first's run, or fail the whole commit on the store's one-active-run-per-key index).

    Raises:
        ParamsInvalid: a key is not valid, or is given twice.
    """
    for key in keys:
        check_key(key, identity)
    named = [key for key in keys if key is not None]
    if len(named) != len(set(named)):
        twice = sorted({key for key in named if named.count(key) > 1})
        raise ParamsInvalid(f"key: given more than once in one start: {', '.join(twice)}")


def parse_state(state: str | TaskState | None) -> TaskState | None:
    """A state filter: None, a ``TaskState`` or its name.

    Raises:
        ParamsInvalid: not a state name (the message lists them).
    """
    if state is None or isinstance(state, TaskState):
        return state
    try:
        return TaskState(state)
    except ValueError:
        names = ", ".join(s.value for s in TaskState)
        raise ParamsInvalid(f"state: must be one of {names}; not {state!r}") from None
