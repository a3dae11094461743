"""The errors pymgr reports, split by who is at fault.

Rules:
- Each class owns its stable string ``code``, its HTTP status and its code on
  the legacy line protocol; transports never map errors themselves.
- A message names the field, the bad value and what was expected.
- Data rides along in ``details`` (JSON-ready), not only in the text.

Legacy ``err_code`` values (never reused; see docs/protocol-legacy.md):
1 no such module or action, 2 the action raised (or an internal error),
3 not authenticated / not allowed / no action given, 4 bad parameters,
5 conflict, 6 request too large, 7 rate limited, 8 unavailable,
9 malformed request, 10 the action ran but its audit record could not be written.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ActionFailed",
    "Conflict",
    "Forbidden",
    "MalformedRequest",
    "NotFound",
    "NotRecorded",
    "ParamsInvalid",
    "PymgrError",
    "PymgrInternalError",
    "RateLimited",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "error_class_for",
]


class PymgrError(Exception):
    """Base of every error pymgr reports to a caller."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    legacy_code: ClassVar[int] = 2

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of an HTTP reply."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class ParamsInvalid(PymgrError):
    """The caller sent parameters that do not fit the action's schema."""

    code = "bad_params"
    http_status = 400
    legacy_code = 4


class MalformedRequest(PymgrError):
    """The caller's request could not be parsed at all (bad JSON, bad line)."""

    code = "bad_params"
    http_status = 400
    legacy_code = 9


class NotFound(PymgrError):
    """No such module, action, task type or task."""

    code = "not_found"
    http_status = 404
    legacy_code = 1


class Unauthenticated(PymgrError):
    """The caller could not be identified (missing or bad signature)."""

    code = "unauthenticated"
    http_status = 401
    legacy_code = 3


class Forbidden(PymgrError):
    """The caller is known but the policy does not allow this."""

    code = "forbidden"
    http_status = 403
    legacy_code = 3


class Conflict(PymgrError):
    """The request clashes with the current state (e.g. a key in use)."""

    code = "conflict"
    http_status = 409
    legacy_code = 5


class TooLarge(PymgrError):
    """The request passed a configured size limit."""

    code = "too_large"
    http_status = 413
    legacy_code = 6


class RateLimited(PymgrError):
    """The caller sent too many requests; ``retry_after_s`` says when to retry."""

    code = "rate_limited"
    http_status = 429
    legacy_code = 7

    @property
    def retry_after_s(self) -> int | None:
        """Whole seconds to wait before retrying (the reply's ``Retry-After``), if the daemon said.

        The per-identity rate limit always says; a limit that counts runs at
        once (a command's ``max_queued``) has no time to give, and this is None.
        """
        value = (self.details or {}).get("retry_after_s")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class Unavailable(PymgrError):
    """The daemon cannot serve this now (shutting down, store unavailable)."""

    code = "unavailable"
    http_status = 503
    legacy_code = 8


class ActionFailed(PymgrError):
    """The action itself raised; the daemon is fine."""

    code = "internal"
    http_status = 500
    legacy_code = 2


class NotRecorded(PymgrError):
    """The action ran, but its record could not be written to the audit log.

    Not a failure of the action: its effect stands, and ``details`` says how it
    ended (``ran``: true, ``outcome``, and ``result`` or ``error``). A client must
    not retry it as if it had not run.
    """

    code = "not_recorded"
    http_status = 500
    legacy_code = 10


class PymgrInternalError(PymgrError):
    """Something in pymgr went wrong that should never happen."""

    code = "internal"
    http_status = 500
    legacy_code = 2

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(
            f"{message}. This should never happen: please file a bug with the daemon's log.",
            details=details,
        )


_BY_CODE: dict[str, type[PymgrError]] = {
    cls.code: cls
    for cls in (
        ParamsInvalid,
        NotFound,
        Unauthenticated,
        Forbidden,
        Conflict,
        TooLarge,
        RateLimited,
        Unavailable,
        NotRecorded,
        ActionFailed,
    )
}


def error_class_for(code: str) -> type[PymgrError]:
    """The error class a client raises for a reply's ``error.code``."""
    return _BY_CODE.get(code, PymgrError)
