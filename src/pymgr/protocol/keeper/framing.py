"""Length-prefixed JSON frames between the daemon and the keeper: a pure codec, no I/O.

Rules (after h11's ``Connection``):
- A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON
  holding one object. ``encode_frame`` makes one; ``FrameDecoder`` takes bytes in
  any split (``receive_data``; ``b""`` means end of stream) and hands back
  whole messages (``next_frame``), or the sentinels ``NEED_DATA`` and
  ``CLOSED``, never None.
- Every read is bounded: a length above ``max_frame_bytes`` is an error
  before its body arrives, so a confused peer costs nothing.
- Buffer work is O(bytes read): consumed bytes are dropped in bulk.
- After any error the decoder is broken for good: every later call raises
  the same ``FrameError``. A half-recovered stream would mis-frame the rest.
- Standard library only: the keeper imports this. The typed messages that
  travel in the frames are in ``messages``, their codec in ``codec``.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Final

#: Version of the daemon-keeper messages; a daemon refuses a keeper with another one.
#: Here, not in the keeper package, so that the daemon checks it without importing the keeper's modules (~1 MiB).
PROTOCOL: Final = 1

#: The length prefix: unsigned 32-bit big-endian.
HEADER: Final = struct.Struct(">I")

#: Largest frame either side sends. A spawn request (argv, env) is a few KiB;
#: 1 MiB leaves room for long environments while bounding a bad peer.
MAX_FRAME_BYTES: Final = 1024 * 1024


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: ``next_frame`` needs more bytes to finish the next frame.
NEED_DATA: Final = _Sentinel("NEED_DATA")
#: The stream ended cleanly, between frames.
CLOSED: Final = _Sentinel("CLOSED")


class FrameError(Exception):
    """The byte stream is not a sequence of valid frames."""


#: One encoder for every frame (``json.dumps`` with options builds a new one per call).
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode_frame(message: dict[str, Any], max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """One frame holding ``message`` (a JSON object; typed messages go through ``codec.encode``).

    Raises:
        FrameError: the encoded message is larger than ``max_frame_bytes``.
        TypeError, ValueError: ``message`` is not JSON-serialisable.
    """
    return frame_body(_encode(message).encode(), max_frame_bytes)


def frame_body(body: bytes, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """One frame holding ``body``, UTF-8 JSON already encoded.

    Raises:
        FrameError: ``body`` is larger than ``max_frame_bytes``.
    """
    if len(body) > max_frame_bytes:
        raise FrameError(f"frame of {len(body)} bytes is larger than max_frame_bytes={max_frame_bytes}")
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Turns a byte stream into messages (see the module rules)."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes must be >= 1, not {max_frame_bytes}")
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._start = 0
        self._eof = False
        self._error: FrameError | None = None

    def receive_data(self, data: bytes) -> None:
        """Feed bytes as they arrive; ``b""`` marks the end of the stream.

        Raises:
            FrameError: data after the end of the stream, or the decoder broke earlier.
        """
        self._check()
        if self._eof:
            raise self._fail("data received after the end of the stream")
        if not data:
            self._eof = True
            return
        self._buffer += data

    def next_frame(self) -> dict[str, Any] | _Sentinel:
        """The next whole message, ``NEED_DATA`` or ``CLOSED``.

        Raises:
            FrameError: a frame too large, a body that is not a JSON object,
                or a stream that ended inside a frame.
        """
        self._check()
        available = len(self._buffer) - self._start
        if available < HEADER.size:
            return self._wait(available, HEADER.size)
        (length,) = HEADER.unpack_from(self._buffer, self._start)
        if length > self.max_frame_bytes:
            raise self._fail(f"frame of {length} bytes is larger than max_frame_bytes={self.max_frame_bytes}")
        if available < HEADER.size + length:
            return self._wait(available, HEADER.size + length)
        begin = self._start + HEADER.size
        body = bytes(self._buffer[begin : begin + length])
        self._consume(HEADER.size + length)
        try:
            message = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise self._fail(f"frame body is not UTF-8 JSON: {exc}") from None
        if not isinstance(message, dict):
            raise self._fail(f"frame body must be a JSON object, not {type(message).__name__}")
        return message

    def _wait(self, available: int, needed: int) -> _Sentinel:
        if not self._eof:
            return NEED_DATA
        if available == 0:
            return CLOSED
        raise self._fail(f"stream ended inside a frame: got {available} of {needed} bytes")

    def _consume(self, size: int) -> None:
        self._start += size
        # Drop consumed bytes in bulk, once they are half the buffer: O(bytes read) overall.
        if self._start > len(self._buffer) // 2:
            del self._buffer[: self._start]
            self._start = 0

    def _fail(self, message: str) -> FrameError:
        self._error = FrameError(message)
        return self._error

    def _check(self) -> None:
        if self._error is not None:
            raise FrameError(f"decoder is broken by an earlier error: {self._error}")
