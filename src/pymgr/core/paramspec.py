"""Typed parameters declared in the config, for task types (and commands).

A TOML table such as ``task_id = { type = "int", min = 0 }`` becomes one
field of a pydantic model, so config-declared parameters validate and show
their JSON Schema exactly like the type hints of a Python action.

Strings are argv material: they may never contain a NUL byte, and they are
bounded (``max_length``, 1024 unless declared). A ``path`` is a string
confined to its ``base`` directory (``core/pathparam.py``).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator

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
        if self.pattern is not None:
            if self.type != "str":
                raise ValueError(f"`pattern` only applies to type 'str', not {self.type!r}")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"`pattern` {self.pattern!r} is not a regular expression: {exc}") from None
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError(f"`min`/`max` only apply to 'int' and 'float', not {self.type!r}")
        if (self.type == "path") != (self.base is not None):
            raise ValueError("type 'path' needs `base`, an absolute directory; `base` only applies to type 'path'")
        if self.base is not None and not self.base.is_absolute():
            raise ValueError(f"`base` must be an absolute directory, not {str(self.base)!r}")
        return self

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None

    def annotation(self) -> Any:
        """The type hint this parameter stands for."""
        if self.type == "int":
            return Annotated[int, Field(ge=self.min, le=self.max, strict=False)]
        if self.type == "float":
            return Annotated[float, Field(ge=self.min, le=self.max)]
        if self.type == "bool":
            return bool
        if self.type == "enum":
            return Literal[tuple(self.choices or ())]
        if self.type == "path":
            return Annotated[
                str,
                Field(max_length=self.max_length),
                AfterValidator(functools.partial(confine, self.base)),
            ]
        return Annotated[
            str,
            Field(max_length=self.max_length, pattern=self.pattern),
            AfterValidator(_no_nul),
        ]


def build_params_model(name: str, specs: dict[str, ParamSpec]) -> type[BaseModel]:
    """A pydantic model (unknown fields forbidden) for declared parameters."""
    fields: dict[str, Any] = {}
    for pname, spec in specs.items():
        default = ... if spec.is_required else spec.default
        fields[pname] = (spec.annotation(), Field(default, description=spec.doc or None))
    # A float param is finite: "inf" in a string must not reach argv as inf.
    return create_model(name, __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **fields)  # type: ignore[call-overload,no-any-return]
