"""The vocabulary of the legacy codec: its states and markers, its errors, its events and its reply bytes.

``legacy.Connection`` is the state machine that moves between these; this
module holds only data and the one encoding of a reply. No I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from pymgr.errors import MalformedRequest, PymgrInternalError


class Sentinel:
    """A named constant: a state, a role, or a ``next_event`` marker."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


# States of the one exchange a connection carries.
#: Reading the request's lines.
RECEIVING: Final = Sentinel("RECEIVING")
#: The request has been handed out as a ``Command``; the server owes a reply.
REPLYING: Final = Sentinel("REPLYING")
#: The reply has been sent; nothing more will happen on this connection.
DONE: Final = Sentinel("DONE")
#: Something went wrong; every later call raises.
ERROR: Final = Sentinel("ERROR")

# Roles: who produced an event.
CLIENT: Final = Sentinel("CLIENT")
SERVER: Final = Sentinel("SERVER")

# What ``next_event`` returns when it has no event.
#: Feed more bytes (or EOF) first.
NEED_DATA: Final = Sentinel("NEED_DATA")
#: The request is complete: stop reading, the server answers now.
PAUSED: Final = Sentinel("PAUSED")


class ProtocolError(Exception):
    """Base of the errors this codec raises; ``legacy_code`` goes in the reply."""

    def __init__(self, message: str, *, legacy_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.legacy_code = legacy_code


class RemoteProtocolError(ProtocolError):
    """The peer sent something this protocol does not allow."""

    def __init__(self, message: str, *, legacy_code: int = MalformedRequest.legacy_code) -> None:
        super().__init__(message, legacy_code=legacy_code)


class LocalProtocolError(ProtocolError):
    """The code driving this connection misused it: a bug on our side."""

    def __init__(self, message: str, *, legacy_code: int = PymgrInternalError.legacy_code) -> None:
        super().__init__(message, legacy_code=legacy_code)


@dataclass(frozen=True, slots=True)
class Command:
    """A complete request: which action to run, its signature and parameters."""

    module: str
    action: str
    signature: str
    #: Every other key (lower-cased) with its stripped value.
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """The server's one answer: ``{"success": success, "msg": msg}``."""

    success: bool
    msg: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.success, bool):
            raise TypeError(f"Reply.success must be a bool, not {self.success!r}")


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side after its request; it may still read the reply."""


Event = Command | Reply | ConnectionClosed


def encode_reply(reply: Reply) -> bytes:
    """The wire bytes of a reply: the 2014 design's ``json.dumps`` output.

    Default separators (``", "``, ``": "``), key order ``success`` then
    ``msg``, ASCII-only (``ensure_ascii``), no trailing newline: the daemon
    closes the connection to end it.

    Raises:
        TypeError, ValueError: ``msg`` is not JSON-serializable.
    """
    return json.dumps({"success": reply.success, "msg": reply.msg}).encode("utf-8")


def error_reply(legacy_code: int, message: str) -> Reply:
    """An error reply: ``{"success": false, "msg": {"err_code": N, "message": ...}}``.

    Old clients read only ``err_code``; ``message`` says what went wrong.
    """
    return Reply(False, {"err_code": legacy_code, "message": message})
