from __future__ import annotations

from typing import Any

import pydantic
import pytest

from pymgr.core.paramspec import DEFAULT_MAX_STR, ParamSpec, build_params_model


def model(**specs: dict[str, Any]) -> type[pydantic.BaseModel]:
    return build_params_model("t", {k: ParamSpec.model_validate(v) for k, v in specs.items()})


@pytest.mark.parametrize(
    ("spec", "value", "ok"),
    [
        ({"type": "int", "min": 0, "max": 10}, 0, True),
        ({"type": "int", "min": 0, "max": 10}, 10, True),
        ({"type": "int", "min": 0, "max": 10}, 11, False),
        ({"type": "int", "min": 0, "max": 10}, -1, False),
        ({"type": "int"}, "7", True),
        ({"type": "int"}, "7; rm -rf /", False),
        ({"type": "float", "max": 1.5}, 1.5, True),
        ({"type": "float", "max": 1.5}, 1.6, False),
        ({"type": "bool"}, "true", True),
        ({"type": "bool"}, "maybe", False),
        ({"type": "enum", "choices": ["a", "b"]}, "a", True),
        ({"type": "enum", "choices": ["a", "b"]}, "c", False),
        ({"type": "str", "pattern": r"^[a-z]+$"}, "abc", True),
        ({"type": "str", "pattern": r"^[a-z]+$"}, "abc; ls", False),
        ({"type": "str", "max_length": 3}, "abc", True),
        ({"type": "str", "max_length": 3}, "abcd", False),
        ({"type": "str"}, "x" * DEFAULT_MAX_STR, True),
        ({"type": "str"}, "x" * (DEFAULT_MAX_STR + 1), False),
        ({"type": "str"}, "a\x00b", False),
    ],
)
def test_declared_types_validate(spec: dict[str, Any], value: Any, ok: bool) -> None:
    m = model(p=spec)
    if ok:
        m.model_validate({"p": value})
    else:
        with pytest.raises(pydantic.ValidationError):
            m.model_validate({"p": value})


def test_defaults_make_params_optional_and_unknown_ones_fail() -> None:
    m = model(a={"type": "int"}, b={"type": "int", "default": 3})
    assert m.model_validate({"a": 1}).model_dump() == {"a": 1, "b": 3}
    with pytest.raises(pydantic.ValidationError, match="Field required"):
        m.model_validate({})
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        m.model_validate({"a": 1, "zzz": 2})


def test_doc_reaches_the_schema() -> None:
    schema = model(a={"type": "int", "doc": "how many"}).model_json_schema()
    assert schema["properties"]["a"]["description"] == "how many"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "enum"}, "type 'enum' needs a non-empty `choices` list"),
        ({"type": "int", "choices": ["a"]}, "`choices` only applies to type 'enum', not 'int'"),
        ({"type": "int", "pattern": "x"}, "`pattern` only applies to type 'str', not 'int'"),
        ({"type": "str", "pattern": "("}, "`pattern` '\\(' is not a regular expression"),
        ({"type": "bool", "min": 1}, "`min`/`max` only apply to 'int' and 'float', not 'bool'"),
        ({"type": "list"}, "Input should be 'int', 'float', 'bool', 'str', 'enum' or 'path'"),
    ],
)
def test_bad_declarations_are_explained(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        ParamSpec.model_validate(spec)


@pytest.mark.parametrize(
    ("spec", "value", "ok"),
    [
        # A pattern matches the whole value, whatever anchors it holds (or lacks).
        ({"type": "str", "pattern": "[a-z]+"}, "abc", True),
        ({"type": "str", "pattern": "[a-z]+"}, "abc; rm -rf /", False),
        ({"type": "str", "pattern": "[a-z]+"}, "x abc", False),
        ({"type": "str", "pattern": "^[a-z]+"}, "abc1", False),
        ({"type": "str", "pattern": "[a-z]+$"}, "1abc", False),
        ({"type": "str", "pattern": "a|b"}, "ab", False),
        ({"type": "str", "pattern": "(?m)^[a-z]+$"}, "abc\nrm -rf /", False),
        ({"type": "str", "pattern": "[a-z]+$"}, "abc\n", False),
        # A leading "-" would be an option to the program: refused unless the param allows it.
        ({"type": "str"}, "-e", False),
        ({"type": "str"}, "--help", False),
        ({"type": "str"}, "a-b", True),
        ({"type": "str"}, "", True),
        ({"type": "str", "allow_option": True}, "-e", True),
        ({"type": "str", "pattern": "-[a-z]", "allow_option": True}, "-n", True),
        # Ints: a JSON integer or a decimal string, nothing looser.
        ({"type": "int"}, "-7", True),
        ({"type": "int"}, 10**30, True),
        ({"type": "int"}, True, False),
        ({"type": "int"}, " 7 ", False),
        ({"type": "int"}, "+7", False),
        ({"type": "int"}, "7.0", False),
        ({"type": "int"}, 7.0, False),
        ({"type": "int"}, "0x7", False),
        ({"type": "int"}, "1_000", False),
        ({"type": "int"}, "٧", False),
        # Floats: a JSON number or a decimal string; never bool, inf or nan.
        ({"type": "float"}, 7, True),
        ({"type": "float"}, "1e-7", True),
        ({"type": "float"}, ".5", True),
        ({"type": "float"}, True, False),
        ({"type": "float"}, " 1.5", False),
        ({"type": "float"}, "nan", False),
        ({"type": "float"}, "inf", False),
        ({"type": "float"}, "1e999", False),
        ({"type": "float"}, float("inf"), False),
        ({"type": "float", "min": 0}, "-0.5", False),
    ],
)
def test_strings_and_numbers_are_strict(spec: dict[str, Any], value: Any, ok: bool) -> None:
    test_declared_types_validate(spec, value, ok)


def test_a_float_is_never_negative_zero() -> None:
    m = model(x={"type": "float", "min": 0})
    assert [str(m.model_validate({"x": v}).x) for v in ("-0", -0.0, "-0.0e5")] == ["0.0", "0.0", "0.0"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"type": "str", "pattern": r"[a-z]+\Z"},
            r"`pattern` '\[a-z\]\+\\\\Z' is not a regular expression the validator "
            r"accepts \(error: unrecognized escape sequence\); it is Rust regex syntax",
        ),
        (
            {"type": "str", "pattern": "(?=a)b"},
            r"\(error: look-around, including look-ahead and look-behind, is not supported\)",
        ),
        ({"type": "str", "pattern": r"(a)\1"}, r"\(error: backreferences are not supported\)"),
        ({"type": "str", "pattern": "a)|(b"}, r"\(error: unopened group\)"),
        ({"type": "int", "allow_option": True}, r"`allow_option` only applies to type 'str', not 'int'"),
        ({"type": "str", "default": "-v"}, r"`default` '-v' is not a valid value: .*must not start with '-'"),
        ({"type": "int", "default": "7 "}, r"`default` '7 ' is not a valid value: .*decimal digits"),
        (
            {"type": "str", "pattern": "[a-z]+", "default": "A"},
            r"`default` 'A' is not a valid value: String should match",
        ),
    ],
)
def test_bad_patterns_and_defaults_are_config_errors(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        ParamSpec.model_validate(spec)


def test_the_schema_shows_the_pattern_as_enforced() -> None:
    schema = model(a={"type": "str", "pattern": "[a-z]+"}).model_json_schema()
    assert schema["properties"]["a"]["pattern"] == "^(?:[a-z]+)$"


@pytest.mark.parametrize("value", ["inf", "nan", "1e999", float("inf"), float("nan")])
def test_a_float_param_is_finite(value: Any) -> None:
    model = build_params_model("t", {"x": ParamSpec.model_validate({"type": "float", "min": 0})})
    assert model.model_validate({"x": "2.5"}).x == 2.5  # type: ignore[attr-defined]
    with pytest.raises(pydantic.ValidationError, match="no inf or nan|finite number"):
        model.model_validate({"x": value})
