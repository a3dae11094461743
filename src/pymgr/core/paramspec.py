"""Typed parameters declared in the config, for task types (and commands).

A TOML table such as ``task_id = { type = "int", min = 0 }`` becomes one
field of a pydantic model, so config-declared parameters validate and show
their JSON Schema exactly like the type hints of a Python action.

Strings are argv material: they may never contain a NUL byte, and they are
bounded (``max_length``, 1024 unless declared); one starting with ``-`` is
refused unless ``allow_option = true``. A ``pattern`` must match the whole
value, whatever anchors it holds: it is checked when the config loads, by
the engine that enforces it (pydantic-core's Rust ``regex``: linear time
whatever the pattern, so a caller's value cannot make a match take long;
no lookaround, no backreferences, ``\\z`` not ``\\Z``). Numbers are strict and
reach argv in canonical form (``core/paramvalues.py``). A ``path`` is a
string confined to its ``base`` directory (``core/pathparam.py``). A
default is validated like a value sent by a caller, when the config loads
(a bad one is a config error) and again at each call (a ``path`` default
is confined against the filesystem as it is then).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import SchemaError

from pymgr.core.paramvalues import float_from_text, int_from_text, no_negative_zero, not_an_option
from pymgr.core.pathparam import confine

#: Default bound on a string parameter; an argv element longer than this is
#: almost surely a mistake or an attack, and the kernel's own ARG_MAX is shared
#: by every argument.
DEFAULT_MAX_STR = 1024


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL byte")
    return value


class ParamSpec(BaseModel):
    """One declared parameter."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["int", "float", "bool", "str", "enum", "path"]
    default: Any = None
    required: bool | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    #: For type "str": a value may start with "-" (the program expects an option there).
    allow_option: bool = False
    max_length: int = Field(DEFAULT_MAX_STR, ge=1)
    choices: list[str] | None = None
    #: For type "path": the absolute directory the path must stay inside.
    base: Path | None = None
    doc: str = ""

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type == "enum" and not self.choices:
            raise ValueError("type 'enum' needs a non-empty `choices` list")
        if self.type != "enum" and self.choices is not None:
            raise ValueError(f"`choices` only applies to type 'enum', not {self.type!r}")
        for key in ("pattern", "allow_option"):
            if getattr(self, key) not in (None, False) and self.type != "str":
                raise ValueError(f"`{key}` only applies to type 'str', not {self.type!r}")
        if self.pattern is not None:
            _check_pattern(self.pattern)
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError(f"`min`/`max` only apply to 'int' and 'float', not {self.type!r}")
        if (self.type == "path") != (self.base is not None):
            raise ValueError(
                "type 'path' needs `base`, an absolute directory; `base` only applies to type 'path'"
            )
        if self.base is not None and not self.base.is_absolute():
            raise ValueError(f"`base` must be an absolute directory, not {str(self.base)!r}")
        # a path is confined at each call, against the disk then
        if self.default is not None and self.type != "path":
            try:
                TypeAdapter(self.annotation()).validate_python(self.default)
            except ValidationError as exc:
                raise ValueError(
                    f"`default` {self.default!r} is not a valid value: {exc.errors()[0]['msg']}"
                ) from None
        return self

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None

    def annotation(self) -> Any:
        """The type hint this parameter stands for."""
        if self.type == "int":
            # The Field first: its bounds then show in the JSON Schema as minimum/maximum.
            return Annotated[
                int, Field(strict=True, ge=self.min, le=self.max), BeforeValidator(int_from_text)
            ]
        if self.type == "float":
            return Annotated[
                float,
                Field(strict=True, ge=self.min, le=self.max, allow_inf_nan=False),
                BeforeValidator(float_from_text),
                AfterValidator(no_negative_zero),
            ]
        if self.type == "bool":
            return bool
        if self.type == "enum":
            return Literal[tuple(self.choices or ())]
        if self.type == "path":
            assert self.base is not None, "_check refuses type 'path' without `base`"
            return Annotated[
                str,
                Field(max_length=self.max_length),
                AfterValidator(functools.partial(confine, self.base)),
            ]
        checks = [AfterValidator(_no_nul)] + ([] if self.allow_option else [AfterValidator(not_an_option)])
        pattern = None if self.pattern is None else _whole(self.pattern)
        return Annotated[str, Field(max_length=self.max_length, pattern=pattern), *checks]


def _whole(pattern: str) -> str:
    """``pattern`` made to match the whole value.

    Safe only for a pattern that compiles on its own (``_check_pattern``): its
    groups are balanced, so it cannot close the wrapping group, and an inline
    flag such as ``(?m)`` stays inside it, so ``^`` and ``$`` here are the
    value's start and end.
    """
    return f"^(?:{pattern})$"


def _check_pattern(pattern: str) -> None:
    for candidate in (pattern, _whole(pattern)):
        try:
            TypeAdapter(Annotated[str, Field(pattern=candidate)])
        except SchemaError as exc:
            reason = str(exc).strip().splitlines()[-1].strip()
            raise ValueError(
                f"`pattern` {pattern!r} is not a regular expression the validator accepts ({reason}); "
                "it is Rust regex syntax: no lookaround, no backreferences, \\z for the end"
            ) from None


def param_field(spec: ParamSpec) -> tuple[Any, Any]:
    """The type hint and pydantic ``Field`` of one declared parameter (a model field or a signature's)."""
    annotation = spec.annotation()
    if spec.is_required:
        return annotation, Field(..., description=spec.doc or None)
    # A default is validated like a sent value; an optional parameter without one is None, rendered as "".
    hint = annotation if spec.default is not None else annotation | None
    return hint, Field(spec.default, description=spec.doc or None, validate_default=True)


def build_params_model(name: str, specs: dict[str, ParamSpec]) -> type[BaseModel]:
    """A pydantic model (unknown fields forbidden) for declared parameters."""
    fields: dict[str, Any] = {pname: param_field(spec) for pname, spec in specs.items()}
    return create_model(name, __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **fields)
