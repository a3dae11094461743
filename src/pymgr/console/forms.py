"""A form from an action's or a task type's JSON Schema, and the form's values read back into params.

Rules:
- One ``Field`` per property: strings, numbers and integers (with their range), booleans, enums,
  arrays of scalars (one item a line), defaults and descriptions.
- A property the audit log redacts (``pymgr._secretparam.is_secret``: ``format: password``,
  ``writeOnly`` or ``"secret": true``) is ``secret``: a password input, its value and default never
  written back into a page nor shown on a confirmation. One test for both, so they never disagree.
- ``read`` turns the browser's strings into typed params and says, per field, what is wrong; an
  empty optional field is left out (the daemon applies its default). The daemon validates again:
  its per-field errors (``details.errors``) are shown beside the same fields.
- A property of a shape this module does not know (an object) is a JSON text field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pymgr._secretparam import is_secret

#: Longest value of one field the console accepts (the daemon has its own limits too).
MAX_FIELD_CHARS = 65536


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    label: str
    #: text, password, integer, number, boolean, choice, list, json
    kind: str
    required: bool
    description: str = ""
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    #: For a list: the kind of its items (text, integer or number).
    item_kind: str = "text"
    #: Never shown nor written back (module docstring); a text one is of kind password.
    secret: bool = False

    def shown_default(self) -> str:
        if self.default is None or self.secret:
            return ""
        if self.kind == "list":
            return "\n".join(map(str, self.default))
        return json.dumps(self.default) if self.kind == "json" else str(self.default)


def _non_null(prop: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """``anyOf: [X, null]`` as ``X`` and whether null is allowed."""
    options = prop.get("anyOf")
    if isinstance(options, list):
        real = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
        if len(real) == 1:
            return {**prop, **real[0]}, len(real) < len(options)
    return prop, False


_SCALARS = {"string": "text", "integer": "integer", "number": "number", "boolean": "boolean"}


def _kind(prop: Mapping[str, Any], secret: bool) -> tuple[str, str]:
    if "enum" in prop:
        return "choice", "text"
    kind = _SCALARS.get(prop.get("type", ""), "json")
    if kind == "text" and secret:
        return "password", "text"
    if prop.get("type") == "array":
        items = prop.get("items")
        if not isinstance(items, dict):
            items = {}
        item_kind = _SCALARS.get(items.get("type", ""), "")
        if item_kind in ("text", "integer", "number"):
            return "list", item_kind
    return kind, "text"


def fields_of(schema: Mapping[str, Any]) -> list[Field]:
    """The form's fields, in the schema's order."""
    required = set(schema.get("required") or ())
    out = []
    for name, raw in (schema.get("properties") or {}).items():
        prop, nullable = _non_null(raw if isinstance(raw, dict) else {})
        secret = is_secret(raw) if isinstance(raw, dict) else False
        kind, item_kind = _kind(prop, secret)
        label = str(prop.get("title") or name.replace("_", " ").capitalize())
        out.append(
            Field(
                name=name,
                label=label,
                kind=kind,
                required=name in required and not nullable,
                description=str(prop.get("description") or ""),
                default=prop.get("default"),
                minimum=prop.get("minimum", prop.get("exclusiveMinimum")),
                maximum=prop.get("maximum", prop.get("exclusiveMaximum")),
                choices=tuple(str(c) for c in prop.get("enum", ())),
                item_kind=item_kind,
                secret=secret,
            )
        )
    return out


def _scalar(kind: str, text: str) -> Any:
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"must be a whole number, not {text!r}") from None
    if kind == "number":
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"must be a number, like 2.5, not {text!r}") from None
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value
    return text


def _value(field: Field, text: str) -> Any:
    if field.kind == "list":
        return [_scalar(field.item_kind, line.strip()) for line in text.splitlines() if line.strip()]
    if field.kind == "json":
        try:
            return json.loads(text)
        except ValueError:
            raise ValueError("must be JSON") from None
    if field.kind == "choice" and text not in field.choices:
        raise ValueError(f"must be one of {', '.join(field.choices)}")
    value = _scalar(field.kind, text)
    if field.kind in ("integer", "number"):
        if field.minimum is not None and value < field.minimum:
            raise ValueError(f"must be at least {field.minimum:g}")
        if field.maximum is not None and value > field.maximum:
            raise ValueError(f"must be at most {field.maximum:g}")
    return value


def read(fields: list[Field], form: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The params of a submitted form, and the errors per field name (empty when all are good)."""
    params: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for field in fields:
        if field.kind == "boolean":
            params[field.name] = form.get(field.name) in ("on", "true", "1")
            continue
        text = form.get(field.name, "")
        if len(text) > MAX_FIELD_CHARS:
            errors[field.name] = f"is longer than {MAX_FIELD_CHARS} characters"
        elif text.strip() == "" and field.kind != "password":
            if field.required:
                errors[field.name] = "is required"
        elif text == "" and field.kind == "password":
            if field.required:
                errors[field.name] = "is required"
        else:
            try:
                params[field.name] = _value(field, text if field.kind == "password" else text.strip())
            except ValueError as exc:
                errors[field.name] = str(exc)
    return params, errors


def daemon_errors(details: Mapping[str, Any] | None) -> dict[str, str]:
    """The daemon's per-field errors (``details.errors``) by field name."""
    found: dict[str, str] = {}
    for error in (details or {}).get("errors") or ():
        if isinstance(error, dict) and isinstance(error.get("field"), str):
            found.setdefault(error["field"].split(".")[0], str(error.get("message", "is not valid")))
    return found
