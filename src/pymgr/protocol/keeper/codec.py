"""The one encoder and the one decoder of the keeper link's messages (``messages``): pure, no I/O.

Rules:
- ``encode`` turns a message into one frame: ``{"op": ..., fields...}`` in
  declared order, nested parts as objects, tuples as arrays; the bytes are
  what the link carried when its messages were plain dicts.
- ``decode`` turns a frame's JSON object into the message its ``op`` names,
  among the ops the receiving side accepts (``REQUESTS`` or ``NEWS``), and
  refuses anything else with a ``KeeperMessageError``: an unknown op
  (``UnknownOp``), a field that is missing and has no default
  (``MissingField``), a field of another type (``MistypedField``). The first
  problem in declared order is the one reported; its message names the field
  (``log.max_bytes``, ``pins[0].parts[1]``), what was expected and what came.
- Types are exact, as JSON has them: an integer is never a boolean, a number
  is an integer or a finite float (read as a float), a tuple arrives as an
  array. Fields the message does not declare are ignored: a newer peer may
  add one.
- The field types are read once, from the dataclasses' annotations, into a
  checker per field: the declarations in ``messages`` are the only schema.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, Union

from pymgr.protocol.keeper import messages
from pymgr.protocol.keeper.framing import MAX_FRAME_BYTES, frame_body
from pymgr.protocol.keeper.messages import NON_EMPTY, Message

#: A message type, as ``decode`` returns the one its ``accept`` map holds.
M = TypeVar("M", bound=Message)

#: Longest repr of a refused value in an error message: enough to recognise it, never a whole environment.
MAX_SHOWN_CHARS: Final = 80


class KeeperMessageError(ValueError):
    """A frame that is not a message the receiving side accepts (``op`` and ``reason`` say why)."""

    def __init__(self, op: object, reason: str) -> None:
        super().__init__(op, reason)
        self.op = op
        self.reason = reason

    def __str__(self) -> str:
        return f"keeper message {self.op!r}: {self.reason}"


class UnknownOp(KeeperMessageError):
    """The frame's ``op`` is not one the receiving side accepts (or it has none)."""


class MissingField(KeeperMessageError, KeyError):
    """A field without a default is absent (``field`` names it, dotted for a nested one)."""

    def __init__(self, op: object, field: str) -> None:
        super().__init__(op, f"{field} is missing")
        self.field = field


class MistypedField(KeeperMessageError, TypeError):
    """A field holds a value of another type (``field``, ``expected``, ``value`` say which)."""

    def __init__(self, op: object, field: str, expected: str, value: object) -> None:
        super().__init__(op, f"{field} must be {expected}, not {_shown(value)}")
        self.field = field
        self.expected = expected
        self.value = value


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else f"{text[: MAX_SHOWN_CHARS - 3]}..."


class _Missing(Exception):
    def __init__(self, field: str) -> None:
        self.field = field


class _Mistyped(Exception):
    def __init__(self, field: str, expected: str, value: object) -> None:
        self.field, self.expected, self.value = field, expected, value


# -- checkers ------------------------------------------------------------------------------

#: Reads one JSON value at a path (``log.max_bytes``) into its typed form, or raises ``_Mistyped``.
Read = Callable[[Any, str], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _Kind:
    """How to read values of one declared type, and how an error names it."""

    read: Read
    #: The JSON types it reads (exact types: a bool is not an int here).
    json_types: tuple[type, ...]
    singular: str
    plural: str


def _scalar(kind: type, singular: str, plural: str) -> _Kind:
    def read(value: Any, path: str) -> Any:
        if type(value) is not kind:
            raise _Mistyped(path, singular, value)
        return value

    return _Kind(read, (kind,), singular, plural)


def _number() -> _Kind:
    def read(value: Any, path: str) -> float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise _Mistyped(path, "a number", value)
        return float(value)

    return _Kind(read, (int, float), "a number", "numbers")


def _union(options: list[_Kind]) -> _Kind:
    singular = " or ".join(option.singular for option in options)

    def read(value: Any, path: str) -> Any:
        for option in options:
            if type(value) in option.json_types:
                try:
                    return option.read(value, path)
                except _Mistyped as exc:
                    if exc.field != path:
                        raise  # a part inside is wrong: that part is named
                    break
        raise _Mistyped(path, singular, value)

    json_types = tuple(t for option in options for t in option.json_types)
    return _Kind(read, json_types, singular, " or ".join(option.plural for option in options))


def _sequence(item: _Kind, non_empty: bool) -> _Kind:
    singular = f"a {'non-empty ' if non_empty else ''}list of {item.plural}"

    def read(value: Any, path: str) -> tuple[Any, ...]:
        if type(value) is not list or (non_empty and not value):
            raise _Mistyped(path, singular, value)
        return tuple(item.read(element, f"{path}[{i}]") for i, element in enumerate(value))

    return _Kind(read, (list,), singular, singular.replace("a ", "lists ", 1).replace("list of", "of", 1))


def _fixed(items: list[_Kind]) -> _Kind:
    if len({item.singular for item in items}) == 1:
        shape = f"of {len(items)} {items[0].plural}"
    else:
        shape = f"[{', '.join(item.singular for item in items)}]"

    def read(value: Any, path: str) -> tuple[Any, ...]:
        if type(value) is not list or len(value) != len(items):
            raise _Mistyped(path, f"a list {shape}", value)
        return tuple(
            item.read(element, f"{path}[{i}]") for i, (item, element) in enumerate(zip(items, value))
        )

    return _Kind(read, (list,), f"a list {shape}", f"lists {shape}")


def _mapping(item: _Kind) -> _Kind:
    singular = f"an object whose values are {item.plural}"

    def read(value: Any, path: str) -> dict[str, Any]:
        if type(value) is not dict:
            raise _Mistyped(path, singular, value)
        return {key: item.read(element, f"{path}[{key!r}]") for key, element in value.items()}

    return _Kind(read, (dict,), singular, singular.replace("an object", "objects", 1))


_SCALARS: Final[Mapping[object, _Kind]] = {
    int: _scalar(int, "an integer", "integers"),
    str: _scalar(str, "a string", "strings"),
    bool: _scalar(bool, "true or false", "booleans"),
    type(None): _scalar(type(None), "null", "nulls"),
    float: _number(),
}


def _kind_of(hint: Any) -> _Kind:
    """The reader of one annotation (the types ``messages`` uses, and no others)."""
    if hint in _SCALARS:
        return _SCALARS[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        if NON_EMPTY in args[1:] and typing.get_origin(args[0]) is tuple:
            return _sequence(_kind_of(typing.get_args(args[0])[0]), non_empty=True)
        return _kind_of(args[0])
    if origin in (Union, types.UnionType):
        # None first: "a string or null" reads better than the other way round, and null is cheapest to test.
        return _union(
            sorted((_kind_of(arg) for arg in args), key=lambda kind: kind.json_types != (type(None),))
        )
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _sequence(_kind_of(args[0]), non_empty=False)
        return _fixed([_kind_of(arg) for arg in args])
    if origin is dict and args[0] is str:
        return _mapping(_kind_of(args[1]))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _object(hint)
    raise TypeError(
        f"the keeper protocol has no reader for {hint!r}; this is a bug in protocol.keeper.messages"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: _Kind
    #: Makes the value of an absent field; None: the field must be there.
    default: Callable[[], Any] | None


def _fields_of(cls: type) -> tuple[_Field, ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = []
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            default: Callable[[], Any] | None = lambda value=field.default: value
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory
        else:
            default = None
        fields.append(_Field(field.name, _kind_of(hints[field.name]), default))
    return tuple(fields)


def _read_fields(cls: type, fields: tuple[_Field, ...], body: Mapping[str, Any], prefix: str) -> Any:
    values = {}
    for field in fields:
        if field.name in body:
            values[field.name] = field.kind.read(body[field.name], prefix + field.name)
        elif field.default is not None:
            values[field.name] = field.default()
        else:
            raise _Missing(prefix + field.name)
    return cls(**values)


def _object(cls: type) -> _Kind:
    fields = _fields_of(cls)
    singular = f"an object with {', '.join(field.name for field in fields)}"

    def read(value: Any, path: str) -> Any:
        if type(value) is not dict:
            raise _Mistyped(path, singular, value)
        return _read_fields(cls, fields, value, f"{path}.")

    return _Kind(read, (dict,), singular, singular.replace("an object", "objects", 1))


#: Every message's fields, read once at import.
_MESSAGE_FIELDS: Final[Mapping[type, tuple[_Field, ...]]] = {
    cls: _fields_of(cls) for cls in (*messages.REQUESTS.values(), *messages.NEWS.values())
}


# -- the codec -------------------------------------------------------------------------------


def decode(body: Mapping[str, Any], accept: Mapping[str, type[M]]) -> M:
    """The message a frame's JSON object holds, if it is one of ``accept`` (``REQUESTS`` or ``NEWS``).

    Raises:
        UnknownOp: ``body["op"]`` is absent or not in ``accept``.
        MissingField: a field without a default is absent.
        MistypedField: a field is not of its declared type.
    """
    op = body.get("op")
    cls = accept.get(op) if isinstance(op, str) else None
    if cls is None:
        raise UnknownOp(op, f"unknown op; expected one of: {', '.join(accept)}")
    try:
        message: M = _read_fields(cls, _MESSAGE_FIELDS[cls], body, "")
    except _Missing as exc:
        raise MissingField(op, exc.field) from None
    except _Mistyped as exc:
        raise MistypedField(op, exc.field, exc.expected, exc.value) from None
    return message


def decode_field(cls: type[Message], name: str, value: Any) -> Any:
    """One field of a message, read as ``decode`` reads it (for a value built apart, such as a spawn's ``pins``).

    Raises:
        MistypedField: ``value`` is not of the field's declared type.
        MissingField: a part inside it lacks a field.
    """
    field = next(field for field in _MESSAGE_FIELDS[cls] if field.name == name)
    try:
        return field.kind.read(value, name)
    except _Missing as exc:
        raise MissingField(cls.op, exc.field) from None
    except _Mistyped as exc:
        raise MistypedField(cls.op, exc.field, exc.expected, exc.value) from None


def to_json(message: Message) -> dict[str, Any]:
    """The JSON object of ``message``, as it travels: ``op`` first, then its fields in order."""
    body: dict[str, Any] = {"op": message.op}
    body.update(_plain(message))
    return body


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


#: One encoder for every message, the frame codec's settings (``json.dumps`` builds one per call).
_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode(message: Message, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """One frame holding ``message``.

    Raises:
        FrameError: the encoded message is larger than ``max_frame_bytes``.
        ValueError: a number field holds NaN or an infinity (JSON has neither).
    """
    return frame_body(_encode_json(to_json(message)).encode(), max_frame_bytes)
