"""The daemon-keeper frame codec, driven with bytes only."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymgr.protocol.keeper.framing import CLOSED, HEADER, NEED_DATA, FrameDecoder, FrameError
from pymgr.protocol.keeper.framing import encode_frame as encode


def frames(decoder: FrameDecoder) -> list[object]:
    out = []
    while (frame := decoder.next_frame()) is not NEED_DATA and frame is not CLOSED:
        out.append(frame)
    return out


def test_encode_is_length_then_json() -> None:
    assert encode({"op": "ack", "id": 1}) == b'\x00\x00\x00\x13{"op":"ack","id":1}'


def test_one_frame_then_need_data_then_closed() -> None:
    decoder = FrameDecoder()
    assert decoder.next_frame() is NEED_DATA
    decoder.receive_data(encode({"a": "é"}))
    assert decoder.next_frame() == {"a": "é"}
    assert decoder.next_frame() is NEED_DATA
    decoder.receive_data(b"")
    assert decoder.next_frame() is CLOSED


def test_byte_by_byte() -> None:
    decoder = FrameDecoder()
    data = encode({"x": 1}) + encode({"y": [1, 2]})
    got = []
    for i in range(len(data)):
        decoder.receive_data(data[i : i + 1])
        got += frames(decoder)
    assert got == [{"x": 1}, {"y": [1, 2]}]


@given(
    st.lists(
        st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=20), max_size=4), max_size=6
    ),
    st.data(),
)
def test_any_split_gives_the_same_messages(messages: list[dict[str, object]], data: st.DataObject) -> None:
    stream = b"".join(encode(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    decoder = FrameDecoder()
    got: list[object] = []
    for begin, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.receive_data(stream[begin:end]) if end > begin else None
        got += frames(decoder)
    decoder.receive_data(b"")
    assert got == messages and decoder.next_frame() is CLOSED


def test_max_frame_bytes_both_sides() -> None:
    body = json.dumps({"k": "x" * 10}, separators=(",", ":")).encode()
    at_limit = FrameDecoder(max_frame_bytes=len(body))
    at_limit.receive_data(HEADER.pack(len(body)) + body)
    assert at_limit.next_frame() == {"k": "x" * 10}
    over = FrameDecoder(max_frame_bytes=len(body) - 1)
    over.receive_data(HEADER.pack(len(body)))  # refused on the header alone
    with pytest.raises(
        FrameError, match=rf"^frame of {len(body)} bytes is larger than max_frame_bytes={len(body) - 1}$"
    ):
        over.next_frame()
    with pytest.raises(
        FrameError, match=rf"^frame of {len(body)} bytes is larger than max_frame_bytes={len(body) - 1}$"
    ):
        encode({"k": "x" * 10}, max_frame_bytes=len(body) - 1)
    assert encode({"k": "x" * 10}, max_frame_bytes=len(body))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1]", r"^frame body must be a JSON object, not list$"),
        (b"{", r"^frame body is not UTF-8 JSON: "),
        (b"\xff", r"^frame body is not UTF-8 JSON: "),
    ],
)
def test_bad_bodies(body: bytes, message: str) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(FrameError, match=message):
        decoder.next_frame()


def test_eof_inside_a_frame() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode({"a": 1})[:-2])
    decoder.receive_data(b"")
    with pytest.raises(FrameError, match=r"^stream ended inside a frame: got 9 of 11 bytes$"):
        decoder.next_frame()


def test_eof_inside_a_header() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"\x00\x00")
    decoder.receive_data(b"")
    with pytest.raises(FrameError, match=r"^stream ended inside a frame: got 2 of 4 bytes$"):
        decoder.next_frame()


def test_every_call_after_an_error_raises() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"\x00\x00\x00\x01x")
    with pytest.raises(FrameError):
        decoder.next_frame()
    with pytest.raises(
        FrameError, match=r"^decoder is broken by an earlier error: frame body is not UTF-8 JSON"
    ):
        decoder.next_frame()
    with pytest.raises(FrameError, match=r"^decoder is broken by an earlier error: "):
        decoder.receive_data(encode({}))


def test_data_after_eof_is_an_error() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"")
    with pytest.raises(FrameError, match=r"^data received after the end of the stream$"):
        decoder.receive_data(b"x")


def test_bad_max_frame_bytes() -> None:
    with pytest.raises(ValueError, match=r"^max_frame_bytes must be >= 1, not 0$"):
        FrameDecoder(0)


def test_buffer_is_compacted() -> None:
    decoder = FrameDecoder()
    for i in range(1000):
        decoder.receive_data(encode({"i": i}))
        assert decoder.next_frame() == {"i": i}
    assert len(decoder._buffer) < 100
