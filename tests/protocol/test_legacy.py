"""The legacy codec, driven with bytes only: events, states, limits, errors, fuzz."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pymgr.protocol
from pymgr.protocol.legacy import (
    DONE,
    ERROR,
    NEED_DATA,
    PAUSED,
    RECEIVING,
    REPLYING,
    Command,
    Connection,
    ConnectionClosed,
    LocalProtocolError,
    RemoteProtocolError,
    Reply,
    Sentinel,
    encode_reply,
    error_reply,
)

REQUEST = b"module:demo\naction:echo\nsignature:abc123\ntext:hi\n\n"
COMMAND = Command(module="demo", action="echo", signature="abc123", params={"text": "hi"})


def drain(conn: Connection) -> list[Any]:
    """Every event ``next_event`` has now, up to the sentinel that ends them."""
    events: list[Any] = []
    for _ in range(10):  # more than a request can ever produce: a loop here is a bug
        event = conn.next_event()
        if isinstance(event, Sentinel):
            return events
        events.append(event)
    raise AssertionError(f"next_event never returned a sentinel: {events}")


def feed(conn: Connection, pieces: list[bytes], *, eof: bool = False) -> list[Any]:
    events: list[Any] = []
    for piece in pieces:
        conn.receive_data(piece)
        events += drain(conn)
    if eof:
        conn.receive_data(b"")
        events += drain(conn)
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# --- the happy path ------------------------------------------------------


def test_one_chunk_gives_one_command_then_pauses() -> None:
    conn = Connection()
    assert conn.state is RECEIVING
    conn.receive_data(REQUEST)
    assert conn.next_event() == COMMAND
    assert conn.state is REPLYING
    assert conn.next_event() is PAUSED


def test_byte_by_byte_needs_data_until_the_blank_line() -> None:
    conn = Connection()
    for byte in bytewise(REQUEST)[:-1]:
        conn.receive_data(byte)
        assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\n")
    assert conn.next_event() == COMMAND


def test_crlf_line_endings_are_tolerated() -> None:
    conn = Connection()
    assert feed(conn, bytewise(REQUEST.replace(b"\n", b"\r\n"))) == [COMMAND]


def test_keys_are_lowercased_and_stripped_values_stripped() -> None:
    raw = b"MODULE: demo \n Action :echo\nSignature:\tabc123\nURL: http://x:80/a \nEmpty:\n\n"
    (command,) = feed(Connection(), [raw])
    assert command == Command("demo", "echo", "abc123", {"url": "http://x:80/a", "empty": ""})


def test_missing_module_action_signature_are_empty_not_errors() -> None:
    (command,) = feed(Connection(), [b"task_ids:1,2\n\n"])
    assert command == Command(module="", action="", signature="", params={"task_ids": "1,2"})


def test_eof_after_complete_lines_ends_the_request() -> None:
    conn = Connection()
    events = feed(conn, [REQUEST[:-1]], eof=True)
    assert events == [COMMAND, ConnectionClosed()]
    assert conn.state is REPLYING
    assert conn.next_event() is PAUSED  # ConnectionClosed is reported once


def test_eof_after_the_blank_line_is_reported_once() -> None:
    conn = Connection()
    assert feed(conn, [REQUEST]) == [COMMAND]
    assert feed(conn, [], eof=True) == [ConnectionClosed()]
    conn.receive_data(b"")  # a second EOF changes nothing
    assert conn.next_event() is PAUSED


def test_bytes_after_the_request_are_ignored() -> None:
    conn = Connection()
    assert feed(conn, [REQUEST + b"module:other\n\n", b"more garbage without colon\n"]) == [COMMAND]
    assert conn.state is REPLYING


@pytest.mark.parametrize("ending", [b"\n\n", b"\n\r\n", b"\r\n\r\n"])
@pytest.mark.parametrize("split", ["one read", "bytewise"])
def test_trailing_bytes_counts_what_followed_the_request(ending: bytes, split: str) -> None:
    request = REQUEST[:-2] + ending
    for extra in (b"", b"x", b"module:other\n\n"):
        conn = Connection()
        data = request + extra
        assert feed(conn, [data] if split == "one read" else bytewise(data)) == [COMMAND]
        assert conn.trailing_bytes == len(extra), (request, extra)
        conn.receive_data(b"later")
        assert conn.trailing_bytes == len(extra) + 5


# --- replies -------------------------------------------------------------


def test_reply_is_exactly_json_dumps_and_moves_to_done() -> None:
    conn = Connection()
    feed(conn, [REQUEST])
    data = conn.send(Reply(True, {"text": "hi", "n": [1, 2]}))
    assert data == b'{"success": true, "msg": {"text": "hi", "n": [1, 2]}}'
    assert data == json.dumps({"success": True, "msg": {"text": "hi", "n": [1, 2]}}).encode()
    assert conn.state is DONE
    assert conn.next_event() is PAUSED


def test_error_reply_shape() -> None:
    assert (
        encode_reply(error_reply(3, "no")) == b'{"success": false, "msg": {"err_code": 3, "message": "no"}}'
    )


def test_reply_is_ascii_json_without_newline() -> None:
    assert encode_reply(Reply(True, "é")) == b'{"success": true, "msg": "\\u00e9"}'


def test_a_second_reply_is_refused() -> None:
    conn = Connection()
    feed(conn, [REQUEST])
    conn.send(Reply(True, None))
    with pytest.raises(
        LocalProtocolError, match=r"^can't handle event type Reply from SERVER in state DONE$"
    ):
        conn.send(Reply(True, None))
    assert conn.state is ERROR


def test_reply_before_the_request_is_complete_is_allowed() -> None:
    """A read timeout or a shutdown answers a half-received request."""
    conn = Connection()
    feed(conn, [b"module:de"])
    assert conn.send(error_reply(9, "too slow")).startswith(b'{"success": false')
    assert conn.state is DONE
    assert feed(conn, [b"mo\n\n"], eof=True) == [ConnectionClosed()]


@pytest.mark.parametrize(
    ("event", "name"),
    [(COMMAND, "Command"), (ConnectionClosed(), "ConnectionClosed"), ("text", "str")],
)
def test_the_server_sends_only_replies(event: Any, name: str) -> None:
    conn = Connection()
    with pytest.raises(
        LocalProtocolError, match=rf"^can't handle event type {name} from SERVER in state RECEIVING$"
    ):
        conn.send(event)
    assert conn.state is ERROR


def test_a_msg_that_is_not_json_is_a_local_error() -> None:
    conn = Connection()
    feed(conn, [REQUEST])
    with pytest.raises(LocalProtocolError, match=r"^reply msg is not JSON-serializable: .*set"):
        conn.send(Reply(True, {1, 2}))
    assert conn.state is ERROR


def test_reply_success_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match=r"^Reply.success must be a bool, not 1$"):
        Reply(1, "x")  # type: ignore[arg-type]


# --- malformed requests --------------------------------------------------

MALFORMED = [
    (b"garbage\n\n", r"^request line 1 has no ':'; expected key:value, got 'garbage'$"),
    (
        b"module:x\n" + b"y" * 60 + b"\n",
        r"^request line 2 has no ':'; expected key:value, got 'y{40}'\.\.\.$",
    ),
    (b" :value\n\n", r"^request line 1 has an empty key; expected key:value, got ' :value'$"),
    (b"module:a\nMODULE:b\n\n", r"^duplicate key 'module' on request lines 1 and 2$"),
    (b"module:a\ntext:\xff\xfe\n\n", r"^request line 2 is not UTF-8: byte 0xff at offset 5$"),
    (b"\n", r"^request is empty: a blank line came before any key:value line$"),
    (b"\r\n", r"^request is empty: a blank line came before any key:value line$"),
]


@pytest.mark.parametrize(("raw", "message"), MALFORMED)
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_malformed_requests_are_remote_errors_code_9(raw: bytes, message: str, split: str) -> None:
    conn = Connection()
    pieces = [raw] if split == "whole" else bytewise(raw)
    with pytest.raises(RemoteProtocolError, match=message) as info:
        feed(conn, pieces, eof=True)
    assert info.value.legacy_code == 9
    assert conn.state is ERROR


def test_eof_before_any_byte() -> None:
    with pytest.raises(
        RemoteProtocolError, match=r"^connection closed before a request was sent; expected"
    ) as info:
        feed(Connection(), [], eof=True)
    assert info.value.legacy_code == 9


def test_eof_in_the_middle_of_a_line() -> None:
    pattern = (
        r"^connection closed in the middle of request line 3 \(11 bytes after the last newline\); end every"
    )
    with pytest.raises(RemoteProtocolError, match=pattern) as info:
        feed(Connection(), [b"module:x\naction:y\nsignature:z"], eof=True)
    assert info.value.legacy_code == 9


def test_after_an_error_every_call_raises() -> None:
    conn = Connection()
    with pytest.raises(RemoteProtocolError):
        feed(conn, [b"garbage\n"])
    for call in (lambda: conn.receive_data(b"x"), conn.next_event, lambda: conn.send(Reply(False, None))):
        with pytest.raises(LocalProtocolError, match=r"^can't call \w+\(\) in state ERROR: an earlier error"):
            call()


def test_data_after_eof_is_a_local_error() -> None:
    conn = Connection()
    conn.receive_data(b"module:x\n")
    conn.receive_data(b"")
    with pytest.raises(
        LocalProtocolError, match=r"^received 1 bytes after EOF \(receive_data\(b''\) was already"
    ):
        conn.receive_data(b"x")
    assert conn.state is ERROR


# --- limits: both sides --------------------------------------------------


def line_of(size: int) -> bytes:
    return b"k:" + b"v" * (size - 2)


@pytest.mark.parametrize("split", ["whole", "bytewise"])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_a_line_at_max_line_bytes_is_accepted(split: str, ending: bytes) -> None:
    raw = line_of(4096) + ending + ending
    events = feed(Connection(max_line_bytes=4096), [raw] if split == "whole" else bytewise(raw))
    assert events == [Command("", "", "", {"k": "v" * 4094})]


def test_a_line_over_max_line_bytes_is_refused_whole() -> None:
    pattern = r"^request line of 4096 bytes is longer than max_line_bytes=4095$"
    with pytest.raises(RemoteProtocolError, match=pattern) as info:
        feed(Connection(max_line_bytes=4095), [line_of(4096) + b"\n\n"])
    assert info.value.legacy_code == 6


def test_a_line_over_max_line_bytes_is_refused_before_its_newline() -> None:
    """A peer that never sends a newline cannot make the buffer grow."""
    conn = Connection(max_line_bytes=4095)
    feed(conn, bytewise(line_of(4095)))
    conn.receive_data(b"\r")  # might still be a "\r\n": not yet too long
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"v")
    pattern = r"^request line of at least 4097 bytes is longer than max_line_bytes=4095$"
    with pytest.raises(RemoteProtocolError, match=pattern) as info:
        conn.next_event()
    assert info.value.legacy_code == 6


def test_max_lines_lines_are_accepted() -> None:
    raw = b"".join(b"k%d:v\n" % i for i in range(64)) + b"\n"
    (command,) = feed(Connection(max_lines=64), [raw])
    assert len(command.params) == 64


def test_more_than_max_lines_lines_are_refused() -> None:
    raw = b"".join(b"k%d:v\n" % i for i in range(65)) + b"\n"
    with pytest.raises(
        RemoteProtocolError, match=r"^request has more than max_lines=64 key:value lines$"
    ) as info:
        feed(Connection(max_lines=64), bytewise(raw))
    assert info.value.legacy_code == 6


@pytest.mark.parametrize("name", ["max_line_bytes", "max_lines"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "64"])
def test_limits_must_be_positive_ints(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be an int >= 1, not {re.escape(repr(value))}$"):
        Connection(**{name: value})


def test_limit_of_one_is_allowed() -> None:
    assert feed(Connection(max_line_bytes=3, max_lines=1), [b"a:b\n\n"]) == [Command("", "", "", {"a": "b"})]


class CountingBuffer(bytearray):
    """Counts the bytes ``find`` looks at, to check the parser's work is linear."""

    searched = 0

    def find(self, sub: Any, start: Any = 0, *args: Any) -> int:
        CountingBuffer.searched += len(self) - start
        return super().find(sub, start, *args)


def test_buffer_work_is_linear_in_bytes_read() -> None:
    conn = Connection(max_line_bytes=20_000)
    conn._buffer = CountingBuffer()
    CountingBuffer.searched = 0
    raw = b"module:" + b"m" * 19_000 + b"\n" + b"".join(b"k%d:v\n" % i for i in range(30)) + b"\n"
    assert len(feed(conn, bytewise(raw))) == 1
    # The one-pass fast path searches the first read (one byte here) twice more.
    assert CountingBuffer.searched <= len(raw) + 2


def test_the_codec_does_no_io() -> None:
    """STYLE.md: nothing in pymgr/protocol imports asyncio, socket or os."""
    for path in Path(pymgr.protocol.__file__).parent.glob("*.py"):
        imports = re.findall(r"^(?:import|from) (asyncio|socket|os)\b", path.read_text(), re.MULTILINE)
        assert imports == [], f"{path} imports {imports}"


# --- properties ----------------------------------------------------------

#: Pieces that make inputs likely to reach every branch of the parser.
TOKENS = [
    b"module",
    b"action",
    b"signature",
    b"key",
    b":",
    b"\n",
    b"\r",
    b"\r\n",
    b" ",
    b"v",
    b"\xff",
    b"\xc3\xa9",
]
inputs = st.one_of(st.binary(max_size=80), st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join))


def outcome(raw: bytes, cuts: list[int], eof: bool, max_line_bytes: int, max_lines: int) -> Any:
    """Events, or the error's class and code; anything else propagates and fails the test."""
    conn = Connection(max_line_bytes=max_line_bytes, max_lines=max_lines)
    bounds = [0, *sorted(cuts), len(raw)]
    try:
        pieces = [raw[a:b] for a, b in itertools.pairwise(bounds)]
        return feed(conn, [piece for piece in pieces if piece], eof=eof)  # b"" would mean EOF
    except RemoteProtocolError as exc:
        assert conn.state is ERROR
        assert exc.legacy_code in (6, 9)
        return ("error", exc.legacy_code)


@settings(max_examples=2000, deadline=None)
@given(
    raw=inputs,
    data=st.data(),
    eof=st.booleans(),
    max_line_bytes=st.integers(1, 16),
    max_lines=st.integers(1, 6),
)
def test_fuzz_no_input_or_split_crashes_or_changes_the_outcome(
    raw: bytes, data: st.DataObject, eof: bool, max_line_bytes: int, max_lines: int
) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
    result = outcome(raw, cuts, eof, max_line_bytes, max_lines)
    assert result == outcome(raw, [], eof, max_line_bytes, max_lines)
    if isinstance(result, list) and result:
        assert isinstance(result[0], Command)
        assert result[1:] in ([], [ConnectionClosed()])


names = st.text(st.characters(codec="utf-8", exclude_characters=":\r\n"), min_size=1, max_size=12).map(
    str.strip
)
values = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20).map(str.strip)
params = st.dictionaries(
    names.map(str.lower).filter(
        lambda k: k and k not in ("module", "action", "signature") and k == k.strip().lower()
    ),
    values,
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(
    module=values,
    action=values,
    signature=values,
    params=params,
    data=st.data(),
    crlf=st.booleans(),
    end_by_eof=st.booleans(),
)
def test_well_formed_requests_round_trip(
    module: str,
    action: str,
    signature: str,
    params: dict[str, str],
    data: st.DataObject,
    crlf: bool,
    end_by_eof: bool,
) -> None:
    ending = "\r\n" if crlf else "\n"
    lines = [f"module:{module}", f"action:{action}", f"signature:{signature}"]
    lines += [f"{key}:{value}" for key, value in params.items()]
    raw = (ending.join(lines) + ending + ("" if end_by_eof else ending)).encode()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))
    events = outcome(raw, cuts, end_by_eof, 4096, 64)
    assert events[0] == Command(module, action, signature, params)


# --- the one-pass fast path ------------------------------------------------


def full_outcome(
    pieces: list[bytes], eof: bool, max_line_bytes: int, max_lines: int, *, fast: bool = True
) -> Any:
    """Events, or the error's class, code and whole message; ``fast=False`` turns the fast path off."""
    conn = Connection(max_line_bytes=max_line_bytes, max_lines=max_lines)
    if not fast:
        conn._try_one_pass = lambda: None  # type: ignore[method-assign]
    try:
        return feed(conn, [piece for piece in pieces if piece], eof=eof)
    except RemoteProtocolError as exc:
        return (type(exc).__name__, exc.legacy_code, exc.message)


#: Inputs that usually hold a blank line, so that one read takes the fast path.
requests = st.tuples(inputs, st.sampled_from([b"\n\n", b"\r\n\r\n", b"\n\r\n", b""]), inputs).map(b"".join)


@settings(max_examples=2000, deadline=None)
@given(raw=requests, eof=st.booleans(), max_line_bytes=st.integers(1, 16), max_lines=st.integers(1, 6))
def test_fast_path_and_byte_at_a_time_give_identical_events_and_errors(
    raw: bytes, eof: bool, max_line_bytes: int, max_lines: int
) -> None:
    whole = full_outcome([raw], eof, max_line_bytes, max_lines)
    # Same read, line by line: the same events, or the same error word for word.
    assert whole == full_outcome([raw], eof, max_line_bytes, max_lines, fast=False)
    # Byte at a time: the same events, or the same error class and code (a line that is too long
    # is caught before its newline there, so its message says "at least").
    bytewise_result = full_outcome(bytewise(raw), eof, max_line_bytes, max_lines)
    if isinstance(whole, list):
        assert whole == bytewise_result
    else:
        assert whole[:2] == bytewise_result[:2]


def test_a_complete_first_read_is_parsed_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    def line_by_line(*args: Any) -> None:
        raise AssertionError("the line-by-line parse ran")

    monkeypatch.setattr(Connection, "_add_line", line_by_line)
    raw = b"module:demo\r\nAction : echo\nsignature:ab\nk: v \n\nignored\xff"
    assert feed(Connection(), [raw]) == [Command("demo", "echo", "ab", {"k": "v"})]


@pytest.mark.parametrize(
    "raw",
    [b"\nmodule:m\n\n", b"a:b\na:c\n\n", b"novalue\n\n", b" :v\n\n", b"k:\xc3\xa9\n\n", b"k:vvvvv\n\n"],
)
def test_the_fast_path_leaves_the_unusual_to_the_line_by_line_parse(raw: bytes) -> None:
    """Empty request, duplicate key, no ':', empty key, non-ASCII, a long line: the same result both ways."""
    assert full_outcome([raw], False, 6, 64) == full_outcome([raw], False, 6, 64, fast=False)
