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
- Rendering: each value's canonical text (``core/paramvalues.py``): bool is
  "true"/"false", None (an optional parameter left unset) is "", an int is
  plain decimal, a float fixed notation (never an exponent, never "-0.0"),
  a string as it is.
- A ``path`` parameter reaches the run as ``/proc/self/fd/N``: the spawn
  request says which argv elements hold which checked path under which base
  (``spawn_pins``), and the keeper opens each again beneath its base right
  before the spawn, following no symlink (``keeper/spawnpins.py``).
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pymgr.config import ConfigError, TasksConfig, TaskTypeConfig
from pymgr.core.paramspec import build_params_model
from pymgr.keeper.cgroup import limit_files
from pymgr.core.paramvalues import argv_text
from pymgr.tasks import shapes
from pymgr.tasks.restart import RestartRules

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
    timeout_s: float | None = None
    max_concurrent: int | None = None
    restart: RestartRules = RestartRules()
    user: str | None = None
    group: str | None = None
    #: rlimit name ("nofile", "as", "cpu", "nproc") -> (soft, hard).
    rlimits: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 3
    log_timestamps: bool = False
    kill_leftovers: bool = True
    #: cgroup interface file -> value, e.g. {"memory.max": "268435456"} (``_cgroup.limit_files``).
    cgroup_limits: Mapping[str, str] = field(default_factory=dict)
    #: Path parameter name -> the directory it is confined to.
    path_bases: Mapping[str, Path] = field(default_factory=dict)
    #: The params' JSON Schema, made at its first use: pydantic builds it anew at each
    #: ``model_json_schema()`` call (0.3-0.5 ms a type), and the console asks for the types with
    #: every tasks page it renders for a new person (as ``ActionSpec.params_schema`` does for actions).
    _params_schema: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def describe(self) -> shapes.TaskType:
        """The type as ``tasks.types`` shows it (the schema a copy: the caller may change it)."""
        schema = self._params_schema
        if schema is None:
            schema = self.params_model.model_json_schema()
            object.__setattr__(self, "_params_schema", schema)  # frozen: set once here
        return {"name": self.name, "doc": self.doc, "params": copy.deepcopy(schema)}

    def log_settings(self, log_dir: Path) -> dict[str, Any]:
        """How the keeper writes a run's log (the ``log`` of its ``spawn`` and ``adopt`` requests)."""
        return {
            "dir": str(log_dir),
            "max_bytes": self.log_max_bytes,
            "keep": self.log_keep,
            "timestamps": self.log_timestamps,
        }

    def render_argv(self, params: BaseModel) -> list[str]:
        """The argv for one run, from validated parameters."""
        values = {name: render_value(getattr(params, name)) for name in type(params).model_fields}
        values[PYTHON] = sys.executable
        return [render_element(element, values) for element in self.argv]

    def spawn_pins(self, params: Mapping[str, Any], argv: Sequence[str]) -> list[dict[str, Any]]:
        """Where ``argv`` holds checked paths, for the keeper to pin: the spawn request's ``pins``.

        One entry per element that holds a path parameter's value:
        ``{"index": i, "parts": [...]}``, each part the text as it is or
        ``{"base": ..., "path": ...}`` (the checked path), in order; joined,
        the parts are ``argv[i]``. ``params`` are the record's (JSON).
        [] when the template no longer renders ``argv`` (a run an earlier
        daemon queued, whose type has changed since): it gets its paths as text.
        """
        values = {name: render_value(value) for name, value in params.items()}
        values[PYTHON] = sys.executable
        pins: list[dict[str, Any]] = []
        for index, element in enumerate(self.argv):
            parts: list[Any] = []
            position = 0
            for match in PLACEHOLDER.finditer(element):
                name = match.group(1)
                parts.append(element[position : match.start()])
                value = params.get(name)
                if name in self.path_bases and isinstance(value, str):
                    parts.append({"base": str(self.path_bases[name]), "path": value})
                else:
                    parts.append(values.get(name, match.group(0)))
                position = match.end()
            parts.append(element[position:])
            if any(isinstance(part, dict) for part in parts):
                pins.append({"index": index, "parts": [part for part in parts if part != ""]})
        if len(argv) != len(self.argv) or any(_joined(pin["parts"]) != argv[pin["index"]] for pin in pins):
            return []
        return pins


def _joined(parts: Sequence[Any]) -> str:
    return "".join(part if isinstance(part, str) else part["path"] for part in parts)


def render_value(value: Any) -> str:
    """One parameter value as argv text (its canonical form)."""
    return argv_text(value)


def render_element(element: str, values: Mapping[str, str]) -> str:
    """Substitute every placeholder of one argv element.

    Raises:
        KeyError: a placeholder names no value (``compile_type`` rules this
            out for configured types).
    """
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], element)


def compile_type(name: str, config: TaskTypeConfig, defaults: TasksConfig) -> TaskType:
    """Build one type's parameter model and check its argv template.

    Raises:
        ConfigError: a placeholder names no parameter, or a parameter is
            named ``python``.
    """
    where = f"[tasks.types.{name}]"
    if PYTHON in config.params:
        raise ConfigError(
            f"{where} params: {PYTHON!r} is reserved for the daemon's interpreter; rename the parameter"
        )
    known = {PYTHON, *config.params}
    for index, element in enumerate(config.argv):
        for match in PLACEHOLDER.finditer(element):
            if match.group(1) not in known:
                raise ConfigError(
                    f"{where} argv[{index}] {element!r}: unknown placeholder {match.group(0)!r}; "
                    f"known: {', '.join('{' + k + '}' for k in sorted(known))}"
                )
    limits = config.rlimits.model_dump(by_alias=True, exclude_none=True)
    return TaskType(
        name=name,
        doc=config.doc,
        argv=tuple(config.argv),
        params_model=build_params_model(f"tasks.{name}", config.params),
        cwd=config.cwd,
        env=dict(config.env),
        stop_grace_s=config.stop_grace_s if config.stop_grace_s is not None else defaults.stop_grace_s,
        timeout_s=config.timeout_s,
        max_concurrent=config.max_concurrent,
        restart=RestartRules(
            policy=config.restart,
            base_s=config.restart_delay_s,
            cap_s=config.restart_delay_max_s,
            max_attempts=config.max_attempts,
            flap_restarts=config.flap_restarts,
            flap_window_s=config.flap_window_s,
        ),
        user=config.user,
        group=config.group,
        rlimits={k: (v, v) if isinstance(v, int) else (v[0], v[1]) for k, v in limits.items()},
        log_max_bytes=config.log_max_bytes if config.log_max_bytes is not None else defaults.log_max_bytes,
        log_keep=config.log_keep if config.log_keep is not None else defaults.log_keep,
        log_timestamps=config.log_timestamps,
        kill_leftovers=config.kill_leftovers,
        cgroup_limits=limit_files(config.memory_max, config.pids_max, config.cpu_max),
        path_bases={pname: spec.base for pname, spec in config.params.items() if spec.base is not None},
    )


def compile_types(config: TasksConfig) -> dict[str, TaskType]:
    """Every configured type, checked.

    Raises:
        ConfigError: the first bad type, named.
    """
    return {name: compile_type(name, t, config) for name, t in config.types.items()}


def describe_changes(old: TasksConfig, new: TasksConfig) -> list[str]:
    """What a reload from ``old`` to ``new`` changes, one line each.

    ``["added type(s) a, b", "removed type(s) c", "type scan: timeout_s 30.0 -> 60.0",
    "stop_grace_s 5.0 -> 2.0"]``; [] when nothing changed.
    """
    added = sorted(new.types.keys() - old.types.keys())
    removed = sorted(old.types.keys() - new.types.keys())
    changes = [
        f"{label} type(s) {', '.join(names)}"
        for label, names in (("added", added), ("removed", removed))
        if names
    ]
    for name in sorted(old.types.keys() & new.types.keys()):
        before = old.types[name].model_dump(by_alias=True)
        after = new.types[name].model_dump(by_alias=True)
        changes += [f"type {name}: {line}" for line in _field_changes(before, after)]
    changes += _field_changes(old.model_dump(exclude={"types"}), new.model_dump(exclude={"types"}))
    return changes


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys: {"rlimits": {"as": 5}} -> {"rlimits.as": 5}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))  # an empty table has no keys to compare
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _field_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    before, after = _flat(before), _flat(after)
    return [
        f"{key} {_show(before.get(key))} -> {_show(after.get(key))}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def _show(value: Any) -> str:
    return (
        "unset"
        if value is None
        else (str(value) if isinstance(value, int | float | str | Path) else repr(value))
    )
