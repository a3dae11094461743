"""``name=value`` arguments typed by the JSON Schema the daemon publishes."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from pymgr.errors import Forbidden

#: How deep $ref/anyOf nesting is followed: past what pydantic emits; stops a $ref cycle.
_MAX_SCHEMA_DEPTH = 8


_INTEGER = re.compile(r"^[+-]?[0-9]+$")


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class _UsageError(Exception):
    """A command-line mistake found after parsing (a bad name=value)."""


def _finite_json(text: str) -> Any:
    """``text`` as JSON.

    Raises:
        ValueError: NaN, Infinity or a number too large for a double (the daemon refuses them).
    """

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a JSON number; JSON carries finite numbers only")

    def finite(number: str) -> float:
        value = float(number)
        return value if math.isfinite(value) else refuse(number)

    return json.loads(text, parse_constant=refuse, parse_float=finite)


def _json_types(schema: Any, root: dict[str, Any], depth: int = 0) -> list[str]:
    """The JSON types a property schema allows, in order, "null" last.

    Follows local ``$ref``s and ``anyOf``/``oneOf``/``allOf`` (what pydantic
    emits for ``int | None``, enums and nested models); ``[]`` means any.
    """
    if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
        return []
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _json_types(root.get("$defs", {}).get(ref.removeprefix("#/$defs/")), root, depth + 1)
    declared = schema.get("type")
    types = [declared] if isinstance(declared, str) else [t for t in declared or [] if isinstance(t, str)]
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key) or []:
            types += _json_types(sub, root, depth + 1)
    if not types:
        values = schema.get("enum", [schema["const"]] if "const" in schema else [])
        types = [_json_type_of(v) for v in values]
    unique = list(dict.fromkeys(types))
    return sorted(unique, key=lambda t: t == "null")


def _json_type_of(value: Any) -> str:
    if value is None:
        return "null"
    for python_type, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string")):
        if isinstance(value, python_type):
            return name
    return "array" if isinstance(value, list) else "object"


#: What each JSON type expects on the command line, and an example of it.
_EXPECTED = {
    "integer": ("an integer", "42"),
    "number": ("a finite number", "1.5"),
    "boolean": ("a boolean (true/false, 1/0, yes/no)", "true"),
    "array": ("a JSON array", "[1,2]"),
    "object": ("a JSON object", '{"a":1}'),
    "null": ("null", "null"),
    "string": ("a string", "text"),
}


#: Which type wins when a schema allows several (``int | str``: "5" is 5): this order.
_PREFERENCE = tuple(_EXPECTED)


def _parse_as(json_type: str, text: str) -> Any:
    """``text`` read as a value of ``json_type``; ValueError if it does not fit."""
    if json_type == "integer" and _INTEGER.match(text):
        return int(text)
    if json_type == "number" and math.isfinite(number := float(text)):  # JSON has no NaN/Infinity
        return number
    if json_type == "boolean" and text.lower() in _BOOLEANS:
        return _BOOLEANS[text.lower()]
    if json_type in ("array", "object"):
        value = _finite_json(text)
        if isinstance(value, list if json_type == "array" else dict):
            return value
    if json_type == "string" or (json_type == "null" and text == "null"):
        return None if json_type == "null" else text
    raise ValueError(f"{text!r} is not {json_type}")


def _coerce(name: str, text: str, types: list[str], where: str) -> Any:
    known = sorted((t for t in types if t in _EXPECTED), key=_PREFERENCE.index)
    for json_type in known:
        try:
            return _parse_as(json_type, text)
        except ValueError:
            continue
    if not known:
        return text  # no type declared (or an unknown one): the daemon validates
    expected = " or ".join(_EXPECTED[t][0] for t in known)
    example = _EXPECTED[known[0]][1]
    raise _UsageError(
        f"parameter {name!r} of {where} expects {expected}, got {text!r}; "
        f"write {name}={example}, or {name}:=JSON for a raw JSON value"
    )


def _parse_assignments(args: Sequence[str]) -> dict[str, tuple[str, bool]]:
    """``name=value`` / ``name:=JSON`` arguments as ``{name: (text, is_json)}``."""
    parsed: dict[str, tuple[str, bool]] = {}
    for arg in args:
        name, sep, text = arg.partition("=")
        is_json = name.endswith(":")
        name = name.removesuffix(":")
        if not sep or not name:
            raise _UsageError(f"expected name=value or name:=JSON, got {arg!r}")
        if name in parsed:
            raise _UsageError(f"parameter {name!r} given twice; give each parameter once")
        parsed[name] = (text, is_json)
    return parsed


def _build_params(args: Sequence[str], schema_of: Callable[[], Any], where: str) -> dict[str, Any]:
    """The typed parameters of ``args``, read by the schema ``schema_of()`` fetches.

    The schema is fetched only when some value needs typing; a caller not
    allowed to list schemas sends strings and lets the daemon validate.
    """
    assignments = _parse_assignments(args)
    try:
        schema = schema_of() if any(not is_json for _, is_json in assignments.values()) else None
    except Forbidden:
        schema = None
    root = schema if isinstance(schema, dict) else {}
    properties: dict[str, Any] = root["properties"] if isinstance(root.get("properties"), dict) else {}
    params: dict[str, Any] = {}
    for name, (text, is_json) in assignments.items():
        if is_json:
            try:
                params[name] = _finite_json(text)
            except ValueError as exc:
                raise _UsageError(f"parameter {name!r}: {text!r} is not JSON ({exc})") from None
        elif name in properties:
            params[name] = _coerce(name, text, _json_types(properties[name], root), where)
        else:
            params[name] = text  # unknown name: the daemon rejects it with the names it knows
    return params


def _find_schema(entries: Any, name: str, actions_of: str | None = None) -> Any:
    """The ``params`` schema of the entry called ``name`` (in ``actions_of``'s actions)."""
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        if actions_of is not None and entry.get("name") == actions_of:
            return _find_schema(entry.get("actions"), name)
        if actions_of is None and entry.get("name") == name:
            return entry.get("params")
    return None
