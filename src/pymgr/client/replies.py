"""What a client makes of a reply, or of a daemon it cannot reach: a result or a typed error.

Rules:
- A reply ``{"ok": false, "error": {...}}`` raises the class that
  ``pymgr.errors.error_class_for`` gives its code, carrying the reply's
  ``code``, ``message``, ``details`` and the HTTP status (``http_status``).
- A daemon that cannot be reached (or stops answering) raises
  ``ConnectionFailed``, naming the socket or URL and what to check; a reply
  that is not pymgr's JSON envelope raises ``BadReply``.
"""

from __future__ import annotations

import errno
from typing import Any

import httpx

from pymgr.client.fields import BadReply, JsonValue
from pymgr.client.target import SOCKET_ENV, Target
from pymgr.errors import PymgrError, Unavailable, error_class_for

#: How much of an unexpected reply body to quote in an error message.
_SNIPPET_CHARS = 200


class ConnectionFailed(Unavailable):
    """The daemon could not be reached, or the connection broke before its reply.

    ``request_sent`` says whether the request may have reached the daemon (False: no
    connection was made, so nothing ran; ``Retry`` retries those).
    """

    def __init__(
        self, message: str, *, details: dict[str, Any] | None = None, request_sent: bool = True
    ) -> None:
        super().__init__(message, details=details)
        self.request_sent = request_sent


def _os_errno(exc: BaseException) -> int | None:
    """The errno of the OSError behind an httpx error, if any (walks the chain)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    return None


def connection_failed(exc: httpx.TransportError, target: Target, timeout_s: float) -> ConnectionFailed:
    """A ConnectionFailed that says what went wrong and what to check."""
    where = target.describe()
    details = {"target": where, "reason": str(exc) or type(exc).__name__}
    start = "is the daemon running? Start it with `pymgr serve --config FILE`"
    code = _os_errno(exc)
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        message = (
            f"pymgr at {where} did not answer within {timeout_s} s (timeout_s); it may be overloaded or stuck"
        )
    elif code == errno.ENOENT:
        message = (
            f"cannot reach pymgr: no socket at {target.socket}; {start}, or pass --socket / set {SOCKET_ENV}"
        )
    elif code in (errno.EACCES, errno.EPERM):
        message = (
            f"cannot reach pymgr at {where}: permission denied; the socket is mode 0660 by default: "
            f"run as its owner or a member of its group (see `ls -l {target.socket}`)"
        )
    elif code == errno.ECONNREFUSED:
        message = f"cannot reach pymgr at {where}: connection refused (nothing is listening); {start}"
    else:
        message = (
            f"cannot reach pymgr at {where}: {details['reason']}; {start}, and check this user may connect"
        )
    # httpx raises ConnectError / ConnectTimeout only before a byte of the request is sent.
    sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
    return ConnectionFailed(message, details=details, request_sent=sent)


def _bad_reply(response: httpx.Response, target: Target, what: str) -> BadReply:
    snippet = response.text[:_SNIPPET_CHARS]
    return BadReply(
        f"the server at {target.describe()} sent HTTP {response.status_code} with {what}: {snippet!r}; "
        "is it a pymgr daemon? check --socket / --url",
        details={"status": response.status_code, "content_type": response.headers.get("content-type")},
    )


def _server_error(error: Any, status: int) -> PymgrError | None:
    """The typed exception of an ``error`` object, or None if it is malformed."""
    if not isinstance(error, dict):
        return None
    code, message, details = error.get("code"), error.get("message"), error.get("details")
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    exc = error_class_for(code)(message, details=details if isinstance(details, dict) else None)
    # The status the server actually sent, and its code even when this client
    # does not know it (error_class_for falls back to PymgrError).
    exc.http_status = status  # type: ignore[misc]
    if exc.code != code:
        exc.code = code  # type: ignore[misc]
    return exc


def decode(response: httpx.Response, target: Target) -> JsonValue:
    """The ``result`` of a reply, or raise its error.

    Raises:
        PymgrError: the typed error of an ``ok: false`` reply (its ``details.retry_after_s``
            from the ``Retry-After`` header when the body has none).
        BadReply: the body is not a pymgr JSON envelope.
    """
    try:
        body = response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        raise _bad_reply(response, target, "a body that is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
        raise _bad_reply(response, target, 'JSON without a boolean "ok"')
    if body["ok"]:
        if "result" not in body:
            raise _bad_reply(response, target, 'an "ok" reply without "result"')
        result: JsonValue = body["result"]
        return result
    exc = _server_error(body.get("error"), response.status_code)
    if exc is None:
        raise _bad_reply(response, target, 'an error reply without "error.code" and "error.message"')
    retry_after = response.headers.get("retry-after", "")
    if retry_after.isdigit() and "retry_after_s" not in (exc.details or {}):
        exc.details = {**(exc.details or {}), "retry_after_s": int(retry_after)}
    raise exc


def opened(response: httpx.Response, target: Target) -> httpx.Response:
    """A success reply as is (a stream to read); an error reply raises its error.

    Raises:
        PymgrError: the typed error of the reply (its body already read).
        BadReply: an error status with a body that is not an error envelope.
    """
    if response.is_success:
        return response
    decode(response, target)  # raises the reply's error
    raise _bad_reply(response, target, 'an "ok" envelope on an error status')
