"""Reading one JSON object of a reply field by field, each field's type checked (the client's result types use it).

Rules:
- A field that is missing or of the wrong type raises ``BadReply`` naming the
  object, the field and what was expected; a boolean is never a number.
- Fields the reader is not asked for are ignored: a newer daemon may add some.
- Times are ISO 8601 text with a zone (the daemon sends UTC), read into
  timezone-aware ``datetime``; a time without a zone is refused.

Written by hand, not with pydantic: the client stays free of the daemon's
dependencies (tests/test_packaging.py checks the light wheel).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeAlias, TypeVar, Union

from pymgr.errors import PymgrError

#: Any JSON value, as the daemon sends it (``call()``'s result, an action's params schema).
JsonValue: TypeAlias = Union[None, bool, int, float, str, list["JsonValue"], dict[str, "JsonValue"]]
#: A JSON object.
JsonObject: TypeAlias = dict[str, JsonValue]

T = TypeVar("T")


class BadReply(PymgrError):
    """The server's reply is not what pymgr's daemon sends (wrong server, or a bug)."""

    code = "internal"
    http_status = 502


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


class Fields:
    """The fields of one JSON object that should be ``what`` (e.g. "task record")."""

    def __init__(self, value: JsonValue, what: str) -> None:
        if not isinstance(value, dict):
            raise BadReply(f"{what}: expected a JSON object, got {_kind(value)}", details={"object": what})
        self._data = value
        self._what = what

    def _bad(self, name: str, expected: str, value: object) -> BadReply:
        return BadReply(
            f"{self._what}: field {name!r} should be {expected}, not {_kind(value)} {value!r:.80}",
            details={"object": self._what, "field": name, "expected": expected},
        )

    def _get(self, name: str, check: Callable[[object], bool], expected: str, optional: bool) -> object:
        if name not in self._data:
            if optional:
                return None
            raise BadReply(
                f"{self._what}: field {name!r} is missing", details={"object": self._what, "field": name}
            )
        value = self._data[name]
        if (value is None and optional) or (value is not None and check(value)):
            return value
        raise self._bad(name, expected + (" or null" if optional else ""), value)

    def text(self, name: str) -> str:
        value = self._get(name, lambda v: isinstance(v, str), "a string", False)
        assert isinstance(value, str)
        return value

    def opt_text(self, name: str) -> str | None:
        value = self._get(name, lambda v: isinstance(v, str), "a string", True)
        return value if isinstance(value, str) else None

    def integer(self, name: str) -> int:
        value = self.opt_integer(name, optional=False)
        assert value is not None
        return value

    def opt_integer(self, name: str, *, optional: bool = True) -> int | None:
        value = self._get(name, _is_int, "an integer", optional)
        return value if isinstance(value, int) else None

    def number(self, name: str) -> float:
        value = self.opt_number(name, optional=False)
        assert value is not None
        return value

    def opt_number(self, name: str, *, optional: bool = True) -> float | None:
        value = self._get(name, lambda v: _is_int(v) or isinstance(v, float), "a number", optional)
        return value if isinstance(value, int | float) else None

    def flag(self, name: str) -> bool:
        value = self._get(name, lambda v: isinstance(v, bool), "true or false", False)
        return value is True

    def when(self, name: str) -> datetime:
        value = self.opt_when(name, optional=False)
        assert value is not None
        return value

    def opt_when(self, name: str, *, optional: bool = True) -> datetime | None:
        text = self._get(name, _is_zoned_time, "an ISO 8601 time with a zone", optional)
        return datetime.fromisoformat(text) if isinstance(text, str) else None

    def obj(self, name: str) -> JsonObject:
        value = self.opt_obj(name, optional=False)
        assert value is not None
        return value

    def opt_obj(self, name: str, *, optional: bool = True) -> JsonObject | None:
        value = self._get(name, lambda v: isinstance(v, dict), "a JSON object", optional)
        return value if isinstance(value, dict) else None

    def strs(self, name: str) -> tuple[str, ...]:
        value = self._get(name, _is_strs, "a list of strings", False)
        return tuple(value) if isinstance(value, list) else ()

    def opt_flags(self, name: str) -> dict[str, bool] | None:
        """An object of booleans (``task_types``: each type and whether it is allowed), absent as None."""
        value = self._get(name, _is_flags, "an object of true/false", True)
        return dict(value) if isinstance(value, dict) else None

    def value(self, name: str) -> JsonValue:
        """Any JSON value (absent: None)."""
        return self._data.get(name)

    def objects(self, name: str, read: Callable[[JsonValue], T]) -> tuple[T, ...]:
        value = self._get(name, lambda v: isinstance(v, list), "a list", False)
        return tuple(read(item) for item in value) if isinstance(value, list) else ()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_strs(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_flags(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(item, bool) for item in value.values())


def _is_zoned_time(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def list_of(read: Callable[[JsonValue], T], what: str) -> Callable[[JsonValue], list[T]]:
    """A reader of a JSON array whose items ``read`` reads."""

    def read_list(value: JsonValue) -> list[T]:
        if not isinstance(value, list):
            raise BadReply(f"{what}: expected a JSON array, got {_kind(value)}", details={"object": what})
        return [read(item) for item in value]

    return read_list
