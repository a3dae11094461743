"""The 2014 design's ``key:value`` line protocol, as a pure state machine.

Shape (h11's ``Connection``): the server feeds the bytes it reads to
``receive_data`` (``b""`` means EOF), takes events out of ``next_event`` and
turns its answer into bytes with ``send``. Nothing here does I/O or imports
asyncio, socket or os. docs/protocol-legacy.md has the wire format.

Rules:
- One request per connection: lines ``key:value`` separated by ``\\n`` (a
  ``\\r`` just before it is dropped), ended by a blank line. EOF after at
  least one complete line also ends the request, as the old stdlib header
  parser did. EOF in the middle of a line is an error: a cut-off
  ``task_ids:1,2`` must not run as ``task_ids:1,``.
- A blank line before any ``key:value`` line, or EOF before any byte, is an
  empty request: an error, not a ``Command`` with nothing in it.
- Keys are stripped and lower-cased, values stripped. ``module``, ``action``
  and ``signature`` become fields of ``Command`` ("" when absent: the server
  answers that, not the parser); every other key is a parameter.
- Every read is bounded (``max_line_bytes``, ``max_lines``) and buffer work
  is O(bytes read): each byte is searched for ``\\n`` once by the
  line-by-line parse, plus at most twice by the one-pass fast path, which
  runs only on a first read. The fast path takes only a well-formed ASCII
  request whose blank line has arrived; anything else goes line by line,
  so both give the same ``Command`` and every error comes from one place.
- Bytes after the request are ignored (one request per connection), but
  counted in ``trailing_bytes``: the server lingers before closing only when
  the peer sent more than its request.
- Everything that moves the state lives in ``_TRANSITIONS``.
- After any error the connection is in ``ERROR`` and every later call
  raises; the server then encodes its error reply with ``encode_reply``.
- Exactly one ``Reply`` per connection.
"""

from __future__ import annotations

from typing import Final, cast

from pymgr.errors import TooLarge
from pymgr.protocol.legacy_events import (
    CLIENT,
    DONE,
    ERROR,
    NEED_DATA,
    PAUSED,
    RECEIVING,
    REPLYING,
    SERVER,
    Command,
    ConnectionClosed,
    Event,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Reply,
    Sentinel,
    encode_reply,
    error_reply,
)

__all__ = [
    "CLIENT",
    "DEFAULT_MAX_LINES",
    "DEFAULT_MAX_LINE_BYTES",
    "DONE",
    "ERROR",
    "NEED_DATA",
    "PAUSED",
    "RECEIVING",
    "REPLYING",
    "SERVER",
    "Command",
    "Connection",
    "ConnectionClosed",
    "Event",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Reply",
    "Sentinel",
    "encode_reply",
    "error_reply",
]

#: Longest request line, in bytes, without its line ending. The 2014 design's
#: requests are a handful of short lines; 4 KiB leaves room for long parameter
#: values and matches the default of ``[legacy] max_line_bytes``.
DEFAULT_MAX_LINE_BYTES: Final = 4096
#: Most ``key:value`` lines in one request: three headers plus parameters.
DEFAULT_MAX_LINES: Final = 64

#: How much of a bad line an error message quotes.
_PREVIEW_CHARS = 40


# Rule: everything that moves the state is in this table.
# (SERVER, Reply) in RECEIVING: the server may answer before the request is
# complete (a read timeout, a shutdown), as an HTTP server may send a 408.
# (CLIENT, ConnectionClosed) after the request: a half-close, still answered.
_TRANSITIONS: Final[dict[Sentinel, dict[tuple[Sentinel, type[Event]], Sentinel]]] = {
    RECEIVING: {(CLIENT, Command): REPLYING, (SERVER, Reply): DONE},
    REPLYING: {(CLIENT, ConnectionClosed): REPLYING, (SERVER, Reply): DONE},
    DONE: {(CLIENT, ConnectionClosed): DONE},
    ERROR: {},
}


def _preview(text: str) -> str:
    if len(text) <= _PREVIEW_CHARS:
        return repr(text)
    return repr(text[:_PREVIEW_CHARS]) + "..."


class Connection:
    """The server side of one legacy connection: bytes in, events out.

    Args:
        max_line_bytes: longest accepted line, without its line ending.
        max_lines: most ``key:value`` lines in one request.

    Raises:
        ValueError: a limit is not a positive int.
    """

    def __init__(
        self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, max_lines: int = DEFAULT_MAX_LINES
    ) -> None:
        for name, value in (("max_line_bytes", max_line_bytes), ("max_lines", max_lines)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, not {value!r}")
        self.max_line_bytes = max_line_bytes
        self.max_lines = max_lines
        self._state = RECEIVING
        self._buffer = bytearray()
        #: Bytes at the start of ``_buffer`` already searched for b"\n".
        self._scanned = 0
        self._fields: dict[str, str] = {}
        #: Line number where each key was seen, for duplicate-key messages.
        self._key_lines: dict[str, int] = {}
        self._line_count = 0
        self._eof = False
        self._eof_reported = False
        #: Bytes received after the request's end (ignored, only counted).
        self.trailing_bytes = 0

    @property
    def state(self) -> Sentinel:
        """RECEIVING, REPLYING, DONE or ERROR."""
        return self._state

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the peer; ``b""`` means the peer closed (EOF).

        Call ``next_event`` after each call: that is where bytes are parsed
        and where the limits are checked. Once the request is complete,
        later bytes are dropped.

        Raises:
            LocalProtocolError: in state ERROR, or bytes after EOF.
        """
        self._check_usable("receive_data")
        if not data:
            self._eof = True
            return
        if self._eof:
            self._state = ERROR
            raise LocalProtocolError(
                f"received {len(data)} bytes after EOF (receive_data(b'') was already called)"
            )
        if self._state is RECEIVING:
            self._buffer += data
        else:
            self.trailing_bytes += len(data)

    def next_event(self) -> Event | Sentinel:
        """Parse what has arrived.

        Returns:
            A ``Command`` once the request is complete; ``ConnectionClosed``
            once, if the peer closed after its request; otherwise
            ``NEED_DATA`` (while receiving) or ``PAUSED`` (after the request).

        Raises:
            RemoteProtocolError: the request is malformed or too large; its
                ``legacy_code`` is the reply's ``err_code``.
            LocalProtocolError: in state ERROR.
        """
        self._check_usable("next_event")
        if self._state is not RECEIVING:
            return self._event_after_request()
        try:
            command = self._maybe_extract_command()
        except RemoteProtocolError:
            self._state = ERROR
            raise
        if command is None:
            return NEED_DATA
        self._transition(CLIENT, command)
        return command

    def send(self, event: Event) -> bytes:
        """Encode the server's reply and move to DONE.

        Returns:
            The bytes to write; the server closes the connection after them.

        Raises:
            LocalProtocolError: not a ``Reply``, a second reply, a ``msg``
                that is not JSON-serializable, or state ERROR.
        """
        self._check_usable("send")
        next_state = self._next_state(SERVER, event)
        # The table lets the server send nothing but a Reply.
        reply = cast(Reply, event)
        try:
            data = encode_reply(reply)
        except (TypeError, ValueError) as exc:
            self._state = ERROR
            raise LocalProtocolError(f"reply msg is not JSON-serializable: {exc}") from exc
        self._state = next_state
        return data

    # --- state ---------------------------------------------------------

    def _check_usable(self, method: str) -> None:
        if self._state is ERROR:
            raise LocalProtocolError(
                f"can't call {method}() in state ERROR: an earlier error ended this connection; "
                "close it and open a new one"
            )

    def _next_state(self, role: Sentinel, event: object) -> Sentinel:
        next_state = _TRANSITIONS[self._state].get((role, type(event)))  # type: ignore[arg-type]
        if next_state is None:
            message = f"can't handle event type {type(event).__name__} from {role} in state {self._state}"
            self._state = ERROR
            raise LocalProtocolError(message)
        return next_state

    def _transition(self, role: Sentinel, event: Event) -> None:
        self._state = self._next_state(role, event)

    def _event_after_request(self) -> Event | Sentinel:
        if self._eof and not self._eof_reported:
            self._eof_reported = True
            event = ConnectionClosed()
            self._transition(CLIENT, event)
            return event
        return PAUSED

    # --- parsing -------------------------------------------------------

    def _maybe_extract_command(self) -> Command | None:
        if self._line_count == 0 and self._scanned == 0:
            command = self._try_one_pass()
            if command is not None:
                return command
        buffer = self._buffer
        start = 0
        # Search only bytes not searched before: O(bytes read) over the request.
        while (end := buffer.find(b"\n", max(start, self._scanned))) >= 0:
            line = bytes(buffer[start:end])
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                return self._end_at_blank_line(start)
            self._add_line(line)
        # Dropping a bytearray's head is cheap in CPython (it moves a start offset).
        del buffer[:start]
        self._scanned = len(buffer)
        self._check_partial_line()
        if self._eof:
            return self._end_at_eof()
        return None

    def _try_one_pass(self) -> Command | None:
        """The fast path: a request whose blank line is already in the buffer, parsed in one pass.

        Takes only a well-formed, ASCII request within the limits; for
        anything else it returns None and the line-by-line parse below does
        the work, so every error (and its message) comes from one place.
        """
        buffer = self._buffer
        end, request_end = buffer.find(b"\n\n"), 0
        crlf = buffer.find(b"\n\r\n")
        if crlf >= 0 and (end < 0 or crlf < end):
            end, request_end = crlf, crlf + 3
        elif end >= 0:
            request_end = end + 2
        if end <= 0 or buffer[0] == 13:  # no blank line yet, or an empty request ("\n..." or "\r\n...")
            return None
        head = bytes(buffer[:end])
        if not head.isascii():
            return None  # UTF-8 checks and byte lengths: the line-by-line parse
        text = head.decode("ascii")
        if "\r" in text:
            text = text.replace("\r\n", "\n")  # a "\r" just before "\n" is dropped
        lines = text.split("\n")
        if len(lines) > self.max_lines:
            return None
        if len(text) > self.max_line_bytes and max(map(len, lines)) > self.max_line_bytes:
            return None  # ASCII: characters are bytes
        fields: dict[str, str] = {}
        for line in lines:
            key, sep, value = line.partition(":")
            key = key.strip().lower()
            if not sep or not key or key in fields:
                return None
            fields[key] = value.strip()
        self._line_count = len(lines)
        self._fields = fields
        self.trailing_bytes = len(buffer) - request_end
        buffer.clear()  # bytes after the request are ignored
        return self._make_command()

    def _add_line(self, line: bytes) -> None:
        self._line_count += 1
        number = self._line_count
        if number > self.max_lines:
            raise RemoteProtocolError(
                f"request has more than max_lines={self.max_lines} key:value lines",
                legacy_code=TooLarge.legacy_code,
            )
        if len(line) > self.max_line_bytes:
            raise RemoteProtocolError(
                f"request line of {len(line)} bytes is longer than max_line_bytes={self.max_line_bytes}",
                legacy_code=TooLarge.legacy_code,
            )
        key, value = self._split_line(number, line)
        first = self._key_lines.get(key)
        if first is not None:
            raise RemoteProtocolError(f"duplicate key {key!r} on request lines {first} and {number}")
        self._key_lines[key] = number
        self._fields[key] = value

    @staticmethod
    def _split_line(number: int, line: bytes) -> tuple[str, str]:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(
                f"request line {number} is not UTF-8: byte 0x{line[exc.start]:02x} at offset {exc.start}"
            ) from None
        key, sep, value = text.partition(":")
        if not sep:
            raise RemoteProtocolError(
                f"request line {number} has no ':'; expected key:value, got {_preview(text)}"
            )
        key = key.strip().lower()
        if not key:
            raise RemoteProtocolError(
                f"request line {number} has an empty key; expected key:value, got {_preview(text)}"
            )
        return key, value.strip()

    def _check_partial_line(self) -> None:
        size = len(self._buffer)
        if self._buffer.endswith(b"\r"):
            size -= 1  # may be the start of a "\r\n" line ending
        if size > self.max_line_bytes:
            raise RemoteProtocolError(
                f"request line of at least {size} bytes is longer than max_line_bytes={self.max_line_bytes}",
                legacy_code=TooLarge.legacy_code,
            )

    def _end_at_blank_line(self, request_end: int) -> Command:
        if self._line_count == 0:
            raise RemoteProtocolError("request is empty: a blank line came before any key:value line")
        self.trailing_bytes = len(self._buffer) - request_end
        self._buffer.clear()  # bytes after the request are ignored
        self._scanned = 0
        return self._make_command()

    def _end_at_eof(self) -> Command:
        if self._buffer:
            raise RemoteProtocolError(
                f"connection closed in the middle of request line {self._line_count + 1} "
                f"({len(self._buffer)} bytes after the last newline); end every line with '\\n'"
            )
        if self._line_count == 0:
            raise RemoteProtocolError(
                "connection closed before a request was sent; expected key:value lines ended by a blank line"
            )
        return self._make_command()

    def _make_command(self) -> Command:
        fields = self._fields
        self._fields = {}
        return Command(
            module=fields.pop("module", ""),
            action=fields.pop("action", ""),
            signature=fields.pop("signature", ""),
            params=fields,
        )
