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


@pytest.mark.parametrize("value", ["inf", "nan", "1e999", float("inf"), float("nan")])
def test_a_float_param_is_finite(value: Any) -> None:
    model = build_params_model("t", {"x": ParamSpec.model_validate({"type": "float", "min": 0})})
    assert model.model_validate({"x": "2.5"}).x == 2.5  # type: ignore[attr-defined]
    with pytest.raises(pydantic.ValidationError, match="finite number"):
        model.model_validate({"x": value})
