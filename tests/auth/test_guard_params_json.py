"""The guard's params JSON (bounded by max_params_bytes, reused by the audit line).

It comes from pydantic-core's encoder for speed; these pin that it is the
same JSON the json module gives, and that what pydantic-core cannot encode
still goes through the bound (through the json module).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from pymgr.auth.pipeline import GuardedDispatcher
from pymgr.core.dispatch import Call
from pymgr.core.identity import Identity
from pymgr.core.registry import Registry
from pymgr.errors import TooLarge

CALLER = Identity(transport="unix", uid=0)


def guard(limit: int) -> GuardedDispatcher:
    return GuardedDispatcher(Registry(), policy=None, auditor=None, max_params_bytes=limit)


def params_json(params: Any, limit: int = 1000) -> str | None:
    return guard(limit)._params_json(Call("m", "a", params, CALLER))


@pytest.mark.parametrize(
    "params",
    [
        {"a": 1},
        {"s": "é ü 漢", "n": None, "l": [1, 2.5, True]},
        {"big": 10**30, "f": 1e16, "nan": math.nan},
        {"nested": {"x": [{"y": "z"}]}},
        {1: "int key"},
    ],
)
def test_same_json_as_the_json_module(params: dict[str, Any]) -> None:
    assert params_json(params) == json.dumps(params, ensure_ascii=False, separators=(",", ":"), default=str)


def test_bytes_pydantic_core_cannot_encode_are_bounded_by_their_json_module_size() -> None:
    params = {"b": b"\xff" * 4}  # not UTF-8: pydantic-core refuses it; the json module writes str() of it
    text = json.dumps(params, ensure_ascii=False, separators=(",", ":"), default=str)
    assert params_json(params, limit=len(text)) == text
    with pytest.raises(
        TooLarge,
        match=rf"^params of m\.a are {len(text)} bytes of JSON, more than "
        rf"max_params_bytes={len(text) - 1}$",
    ):
        params_json(params, limit=len(text) - 1)


def test_the_bound_counts_utf8_bytes_on_both_sides_of_the_limit() -> None:
    params = {"s": "é"}  # 9 characters, 10 bytes
    assert params_json(params, limit=10) == '{"s":"é"}'
    with pytest.raises(
        TooLarge, match=r"^params of m\.a are 10 bytes of JSON, more than max_params_bytes=9$"
    ):
        params_json(params, limit=9)


def test_a_cycle_is_not_json_and_left_to_dispatch() -> None:
    params: dict[str, Any] = {}
    params["self"] = params
    assert params_json(params) is None
