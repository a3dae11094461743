"""The keeper link's typed messages: every one round-trips, every refusal says what and where, and the
bytes are those the link carried when its messages were plain dicts."""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from typing import Any, Union

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymgr.protocol import keeper as proto
from pymgr.protocol.keeper import (
    NEWS,
    REQUESTS,
    FrameDecoder,
    KeeperMessageError,
    MissingField,
    MistypedField,
    UnknownOp,
    decode,
    encode,
    encode_frame,
    to_json,
)
from pymgr.protocol.keeper.messages import NON_EMPTY

ALL = {**REQUESTS, **NEWS}


def strategy(hint: Any) -> st.SearchStrategy[Any]:
    """Values of one annotation of ``messages``, derived from the declarations themselves."""
    scalars: dict[Any, st.SearchStrategy[Any]] = {
        int: st.integers(),
        float: st.floats(allow_nan=False, allow_infinity=False),
        str: st.text(),
        bool: st.booleans(),
        type(None): st.none(),
    }
    if hint in scalars:
        return scalars[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        inner = typing.get_args(args[0])[0]
        return st.lists(strategy(inner), min_size=1 if NON_EMPTY in args[1:] else 0).map(tuple)
    if origin in (Union, types.UnionType):
        return st.one_of([strategy(arg) for arg in args])
    if origin is tuple:
        if args[1:] == (Ellipsis,):
            return st.lists(strategy(args[0]), max_size=4).map(tuple)
        return st.tuples(*(strategy(arg) for arg in args))
    if origin is dict:
        return st.dictionaries(st.text(), strategy(args[1]), max_size=4)
    assert dataclasses.is_dataclass(hint), hint
    return built(hint)


def built(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return st.builds(cls, **{field.name: strategy(hints[field.name]) for field in dataclasses.fields(cls)})


def wire(message: Any) -> dict[str, Any]:
    """What travels, read back as JSON (tuples become arrays)."""
    return dict(json.loads(encode(message)[4:]))


@pytest.mark.parametrize("cls", list(ALL.values()), ids=list(ALL))
@given(data=st.data())
def test_every_message_round_trips(cls: type, data: st.DataObject) -> None:
    message = data.draw(built(cls))
    body = wire(message)
    assert body["op"] == cls.op and list(body)[1:] == [field.name for field in dataclasses.fields(cls)]
    accept = REQUESTS if cls.op in REQUESTS else NEWS
    assert decode(body, accept) == message
    decoder = FrameDecoder()
    decoder.receive_data(encode(message))
    assert decoder.next_frame() == body == to_json(message)
    assert encode(message) == encode_frame(to_json(message))  # the bytes a dict-speaking side sends


def test_the_bytes_are_those_of_the_dict_messages() -> None:
    spawn = proto.Spawn(
        id=3,
        argv=("/bin/ls", "/tmp"),
        pins=(proto.Pin(index=1, parts=(proto.PinPath(base="/", path="/tmp"),)),),
        env={"PYMGR_TASK_MARKER": "m"},
        cwd="/",
        rlimits={"nofile": (64, 64)},
        marker="m",
        log=proto.LogSettings(dir="/l", max_bytes=10, keep=1, timestamps=True),
        cgroup=proto.CgroupRequest(path="/sys/fs/cgroup/r3", limits={"pids.max": "5"}),
    )
    assert encode(spawn)[4:] == (
        b'{"op":"spawn","id":3,"argv":["/bin/ls","/tmp"],"pins":[{"index":1,"parts":[{"base":"/","path":"/tmp"}]}],'
        b'"env":{"PYMGR_TASK_MARKER":"m"},"cwd":"/","user":null,"group":null,"rlimits":{"nofile":[64,64]},'
        b'"marker":"m","log":{"dir":"/l","max_bytes":10,"keep":1,"timestamps":true},"leftovers_grace_s":null,'
        b'"cgroup":{"path":"/sys/fs/cgroup/r3","limits":{"pids.max":"5"}}}'
    )
    live = proto.Spawned(
        id=3,
        pid=10,
        start_time=99,
        boot_id="b",
        started_at=1.5,
        adopted=False,
        stopping=False,
        cgroup=None,
        output=(7, 8),
        progress=(50.0, None),
    )
    assert encode(live)[4:] == (
        b'{"op":"spawned","id":3,"pid":10,"start_time":99,"boot_id":"b","started_at":1.5,"adopted":false,'
        b'"stopping":false,"cgroup":null,"output":[7,8],"progress":[50.0,null]}'
    )
    assert encode(proto.Ack(id=5)) == b'\x00\x00\x00\x13{"op":"ack","id":5}'
    assert encode(proto.Synced())[4:] == b'{"op":"synced"}'


def test_absent_fields_with_a_meaning_take_their_default() -> None:
    spawn = decode({"op": "spawn", "id": 1, "argv": ["/bin/true"], "env": {}, "log": _LOG}, REQUESTS)
    assert spawn == proto.Spawn(id=1, argv=("/bin/true",), env={}, log=proto.LogSettings(**_LOG))
    assert decode({"op": "kill", "id": 1}, REQUESTS) == proto.Kill(id=1, grace_s=0.0)
    # A status an earlier keeper journalled before runs had cgroups, or leftovers were stopped:
    old = {k: v for k, v in to_json(_EXIT).items() if k not in ("cgroup", "exited_on_its_own")}
    assert decode(old, NEWS) == dataclasses.replace(_EXIT, cgroup=None, exited_on_its_own=False)


def test_an_integer_is_a_number_but_a_boolean_is_not_an_integer() -> None:
    kill = decode({"op": "kill", "id": 1, "grace_s": 5}, REQUESTS)
    assert isinstance(kill, proto.Kill) and type(kill.grace_s) is float
    with pytest.raises(MistypedField, match=r"^keeper message 'kill': id must be an integer, not True$"):
        decode({"op": "kill", "id": True}, REQUESTS)


def test_fields_a_message_does_not_declare_are_ignored() -> None:
    assert decode({"op": "ack", "id": 1, "later": [1]}, REQUESTS) == proto.Ack(id=1)


_LOG = {"dir": "/l", "max_bytes": 10, "keep": 1, "timestamps": False}
_EXIT = proto.Exit(
    id=1,
    pid=2,
    start_time=3,
    boot_id="b",
    started_at=1.0,
    ended_at=2.0,
    exit_code=0,
    signal=None,
    error=None,
    killed=False,
    exited_on_its_own=True,
    cgroup="/c",
    progress=None,
)


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "accept", "message"),
    [
        (
            {"op": "nope"},
            REQUESTS,
            "keeper message 'nope': unknown op; expected one of: spawn, kill, adopt, ack, resend, exit_when_idle",
        ),
        (
            {"id": 1},
            REQUESTS,
            "keeper message None: unknown op; expected one of: spawn, kill, adopt, ack, resend, exit_when_idle",
        ),
        (
            {"op": 7},
            NEWS,
            "keeper message 7: unknown op; expected one of: hello, live, spawned, adopted, orphan, exit, ",
        ),
        ({"op": "hello"}, REQUESTS, "keeper message 'hello': unknown op; "),  # news is not a request
        ({"op": "spawn"}, NEWS, "keeper message 'spawn': unknown op; "),  # nor a request news
    ],
)
def test_an_unknown_op_is_refused(body: dict[str, Any], accept: dict[str, Any], message: str) -> None:
    with pytest.raises(UnknownOp, match=f"^{re.escape(message)}"):
        decode(body, accept)


def _required(cls: type) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def _sample(hint: Any) -> Any:
    """One valid value of an annotation: the first option of a union that is not None."""
    samples: dict[Any, Any] = {int: 1, float: 1.5, str: "s", bool: True}
    if hint in samples:
        return samples[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _sample(args[0])
    if origin in (Union, types.UnionType):
        return _sample(next(arg for arg in args if arg is not type(None)))
    if origin is tuple:
        return (_sample(args[0]),) if args[1:] == (Ellipsis,) else tuple(_sample(arg) for arg in args)
    if origin is dict:
        return {"k": _sample(args[1])}
    hints = typing.get_type_hints(hint, include_extras=True)
    return hint(**{field.name: _sample(hints[field.name]) for field in dataclasses.fields(hint)})


def _example(cls: type) -> dict[str, Any]:
    """A valid JSON object of ``cls``, every field present."""
    return to_json(_sample(cls))


@pytest.mark.parametrize(
    ("cls", "name"),
    [(cls, name) for cls in ALL.values() for name in _required(cls)],
    ids=lambda v: getattr(v, "op", v),
)
def test_each_missing_field_is_refused_by_name(cls: type, name: str) -> None:
    body = _example(cls)
    del body[name]
    with pytest.raises(MissingField, match=rf"^keeper message '{cls.op}': {name} is missing$") as caught:
        decode(body, ALL)
    assert (caught.value.op, caught.value.field) == (cls.op, name)
    assert isinstance(caught.value, KeyError)  # as a dict lookup of it was


def _wrong(hint: Any) -> Any:
    """A JSON value no field of ``hint`` accepts."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    options = tuple(typing.get_origin(o) or o for o in options if o is not type(None))
    if options == (bool,):
        return 1
    if options in ((int,), (float,)):
        return "7"
    if options == (str,):
        return 7
    if all(o in (tuple, typing.Annotated) for o in options):
        return {"x": 1}
    return "text"  # objects: nested parts and mappings


@pytest.mark.parametrize(
    ("cls", "name"),
    [(cls, f.name) for cls in ALL.values() for f in dataclasses.fields(cls)],
    ids=lambda v: getattr(v, "op", v),
)
def test_each_mistyped_field_is_refused_by_name(cls: type, name: str) -> None:
    body = _example(cls)
    body[name] = wrong = _wrong(typing.get_type_hints(cls, include_extras=True)[name])
    pattern = rf"^keeper message '{cls.op}': {name} must be .+, not {re.escape(repr(wrong))}$"
    with pytest.raises(MistypedField, match=pattern) as caught:
        decode(body, ALL)
    assert (caught.value.field, caught.value.value) == (name, wrong)
    assert isinstance(caught.value, TypeError)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"argv": []}, "argv must be a non-empty list of strings, not []"),
        ({"argv": ["a", 1]}, "argv[1] must be a string, not 1"),
        ({"env": {"A": None}}, "env['A'] must be a string, not None"),
        ({"rlimits": {"nofile": [1]}}, "rlimits['nofile'] must be a list of 2 integers, not [1]"),
        ({"log": {**_LOG, "max_bytes": "4096"}}, "log.max_bytes must be an integer, not '4096'"),
        ({"log": {"dir": "/l"}}, "log.max_bytes is missing"),
        ({"pins": [{"index": 1, "parts": [{"base": "/"}]}]}, "pins[0].parts[0].path is missing"),
        (
            {"pins": [{"index": 1, "parts": [3]}]},
            "pins[0].parts[0] must be a string or an object with base, path, not 3",
        ),
        ({"pins": {"index": 1}}, "pins must be a list of objects with index, parts, not {'index': 1}"),
        ({"cwd": ["/"]}, "cwd must be null or a string, not ['/']"),
        ({"leftovers_grace_s": float("inf")}, "leftovers_grace_s must be null or a number, not inf"),
        (
            {"cgroup": {"path": "/c", "limits": {"pids.max": 5}}},
            "cgroup.limits['pids.max'] must be a string, not 5",
        ),
    ],
)
def test_a_spawn_refusal_names_the_nested_field(changes: dict[str, Any], message: str) -> None:
    body = {"op": "spawn", "id": 1, "argv": ["/bin/ls", "/tmp"], "env": {}, "log": _LOG, **changes}
    with pytest.raises(KeeperMessageError, match=f"^keeper message 'spawn': {re.escape(message)}$") as caught:
        decode(body, REQUESTS)
    assert caught.value.reason == message


def test_the_first_problem_in_declared_order_is_the_one_reported() -> None:
    with pytest.raises(
        MistypedField, match=r"^keeper message 'spawn': argv must be a non-empty list of strings, not \[\]$"
    ):
        decode({"op": "spawn", "id": 1, "argv": [], "env": {}}, REQUESTS)  # log is missing too


def test_a_long_refused_value_is_cut_short() -> None:
    with pytest.raises(MistypedField) as caught:
        decode({"op": "ack", "id": "x" * 500}, REQUESTS)
    assert str(caught.value) == f"keeper message 'ack': id must be an integer, not '{'x' * 76}..."


def test_every_refusal_is_a_value_error_of_the_link() -> None:
    for error in (UnknownOp, MissingField, MistypedField):
        assert issubclass(error, KeeperMessageError) and issubclass(error, ValueError)


def test_a_nan_cannot_be_sent() -> None:
    with pytest.raises(ValueError):
        encode(proto.Progress(id=1, percent=float("nan"), message=None))
