"""A form from a JSON Schema, and its values read back (pure: no server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jinja2 import Environment, FileSystemLoader

from pymgr.console import forms

TEMPLATES = Path(forms.__file__).parent / "templates"

SCHEMA: dict[str, Any] = {
    "properties": {
        "name": {"type": "string", "description": "Who."},
        "token": {"type": "string", "format": "password"},
        "count": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
        "ratio": {"type": "number"},
        "force": {"type": "boolean", "default": False},
        "mode": {"enum": ["fast", "slow"]},
        "ids": {"type": "array", "items": {"type": "integer"}},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "extra": {"type": "object"},
    },
    "required": ["name", "token", "note"],
}
FIELDS = {f.name: f for f in forms.fields_of(SCHEMA)}


def test_each_property_becomes_the_field_of_its_type() -> None:
    kinds = {name: f.kind for name, f in FIELDS.items()}
    assert kinds == {
        "name": "text",
        "token": "password",
        "count": "integer",
        "ratio": "number",
        "force": "boolean",
        "mode": "choice",
        "ids": "list",
        "note": "text",
        "extra": "json",
    }
    assert (FIELDS["count"].minimum, FIELDS["count"].maximum, FIELDS["count"].shown_default()) == (1, 10, "3")
    assert FIELDS["name"].description == "Who." and FIELDS["name"].required
    assert not FIELDS["note"].required  # nullable: may be left empty
    assert FIELDS["ids"].item_kind == "integer" and FIELDS["mode"].choices == ("fast", "slow")


def test_a_secret_default_is_never_shown() -> None:
    field = forms.Field("token", "Token", "password", False, default="hunter2", secret=True)
    assert field.shown_default() == ""


@pytest.mark.parametrize(
    ("form", "params", "errors"),
    [
        ({"name": "a", "token": "t"}, {"name": "a", "token": "t", "force": False}, {}),
        ({"name": " ", "token": ""}, {"force": False}, {"name": "is required", "token": "is required"}),
        (
            {"name": "a", "token": " x ", "count": "10", "force": "on"},
            {"name": "a", "token": " x ", "count": 10, "force": True},
            {},
        ),
        ({"name": "a", "token": "t", "count": "11"}, None, {"count": "must be at most 10"}),
        ({"name": "a", "token": "t", "count": "0"}, None, {"count": "must be at least 1"}),
        ({"name": "a", "token": "t", "count": "2.5"}, None, {"count": "must be a whole number, not '2.5'"}),
        ({"name": "a", "token": "t", "ratio": "nan"}, None, {"ratio": "must be a finite number"}),
        ({"name": "a", "token": "t", "mode": "medium"}, None, {"mode": "must be one of fast, slow"}),
        (
            {"name": "a", "token": "t", "ids": "1\n\n2\n"},
            {"name": "a", "token": "t", "force": False, "ids": [1, 2]},
            {},
        ),
        ({"name": "a", "token": "t", "ids": "1\nx"}, None, {"ids": "must be a whole number, not 'x'"}),
        ({"name": "a", "token": "t", "extra": "{"}, None, {"extra": "must be JSON"}),
        ({"name": "a" * 65537, "token": "t"}, None, {"name": "is longer than 65536 characters"}),
    ],
)
def test_values_are_read_back_typed_or_refused_per_field(
    form: dict[str, str], params: dict[str, Any] | None, errors: dict[str, str]
) -> None:
    got_params, got_errors = forms.read(list(FIELDS.values()), form)
    assert got_errors == errors
    if params is not None:
        assert got_params == params


def test_the_daemons_field_errors_are_read_by_field() -> None:
    details = {
        "errors": [{"field": "duration", "message": "too long"}, {"field": "ids.0", "message": "bad"}, "junk"]
    }
    assert forms.daemon_errors(details) == {"duration": "too long", "ids": "bad"}
    assert forms.daemon_errors(None) == {}


SECRETS: dict[str, Any] = {
    "properties": {
        "pin": {"type": "integer", "secret": True},
        "api_key": {"type": "string", "secret": True, "default": "k-default"},
        "hidden": {"type": "string", "writeOnly": True},
        "maybe": {"anyOf": [{"type": "string", "format": "password"}, {"type": "null"}]},
        "plain": {"type": "string", "default": "shown"},
    }
}


def test_what_the_audit_redacts_is_a_secret_field_never_shown() -> None:
    fields = {f.name: f for f in forms.fields_of(SECRETS)}
    assert {n for n, f in fields.items() if f.secret} == {n for n in SECRETS["properties"] if n != "plain"}
    assert fields["api_key"].kind == "password" and fields["api_key"].shown_default() == ""
    assert fields["pin"].kind == "integer"  # read as a number, shown as a password input
    assert forms.read([fields["pin"]], {"pin": "1234"}) == ({"pin": 1234}, {})
    templates = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    macro = templates.get_template("_field.html").module.field  # type: ignore[attr-defined]
    for name in ("pin", "api_key"):
        html = str(macro(fields[name], "f", {name: "typed-before"}, {}))
        assert 'type="password"' in html and "typed-before" not in html and "k-default" not in html
    assert 'value="shown"' in str(macro(fields["plain"], "f", {}, {}))
