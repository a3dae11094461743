"""Task types: the config's ``[tasks.types.NAME]`` tables made ready to run.

Rules:
- No shell, anywhere. Each argv element of the template becomes exactly one
  argv element of the process, whatever the parameter values contain.
- Placeholders are ``{name}`` (a parameter) and ``{python}`` (the daemon's
  own interpreter, ``sys.executable``), found with ``PLACEHOLDER`` and
  substituted in a single pass, so a value that itself contains ``{python}``
  stays literal. ``str.format`` is not used: it allows attribute and index
  access (``{x.__class__}``) on the values.
- Text that does not match ``PLACEHOLDER`` (``{}``, ``{A}``, ``{{``) is left as is.
- A placeholder that names no parameter is a config error at start-up, not
  a surprise at the first run; so is a parameter named ``python``.
- Rendering: bool is "true"/"false", None (an optional parameter left unset)
  is "", everything else is ``str(value)``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pymgr.config import ConfigError, TasksConfig, TaskTypeConfig
from pymgr.core.paramspec import build_params_model

#: A placeholder in an argv element: a lowercase identifier in braces.
PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")

#: The placeholder for the daemon's interpreter; no parameter may take the name.
PYTHON = "python"


@dataclass(frozen=True, slots=True)
class TaskType:
    """One task type, its parameter model built and its argv template checked."""

    name: str
    doc: str
    argv: tuple[str, ...]
    params_model: type[BaseModel]
    cwd: Path | None
    env: Mapping[str, str]
    stop_grace_s: float

    def describe(self) -> dict[str, Any]:
        """The type as ``tasks.types`` shows it."""
        return {"name": self.name, "doc": self.doc, "params": self.params_model.model_json_schema()}

    def render_argv(self, params: BaseModel) -> list[str]:
        """The argv for one run, from validated parameters."""
        values = {name: render_value(getattr(params, name)) for name in type(params).model_fields}
        values[PYTHON] = sys.executable
        return [render_element(element, values) for element in self.argv]


def render_value(value: Any) -> str:
    """One parameter value as argv text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def render_element(element: str, values: Mapping[str, str]) -> str:
    """Substitute every placeholder of one argv element.

    Raises:
        KeyError: a placeholder names no value (``compile_type`` rules this
            out for configured types).
    """
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], element)


def compile_type(name: str, config: TaskTypeConfig, default_grace_s: float) -> TaskType:
    """Build one type's parameter model and check its argv template.

    Raises:
        ConfigError: a placeholder names no parameter, or a parameter is
            named ``python``.
    """
    where = f"[tasks.types.{name}]"
    if PYTHON in config.params:
        raise ConfigError(f"{where} params: {PYTHON!r} is reserved for the daemon's interpreter; rename the parameter")
    known = {PYTHON, *config.params}
    for index, element in enumerate(config.argv):
        for match in PLACEHOLDER.finditer(element):
            if match.group(1) not in known:
                raise ConfigError(
                    f"{where} argv[{index}] {element!r}: unknown placeholder {match.group(0)!r}; "
                    f"known: {', '.join('{' + k + '}' for k in sorted(known))}"
                )
    return TaskType(
        name=name,
        doc=config.doc,
        argv=tuple(config.argv),
        params_model=build_params_model(f"tasks.{name}", config.params),
        cwd=config.cwd,
        env=dict(config.env),
        stop_grace_s=config.stop_grace_s if config.stop_grace_s is not None else default_grace_s,
    )


def compile_types(config: TasksConfig) -> dict[str, TaskType]:
    """Every configured type, checked.

    Raises:
        ConfigError: the first bad type, named.
    """
    return {name: compile_type(name, t, config.stop_grace_s) for name, t in config.types.items()}
