"""The audit log: one JSON line per privileged request, denied and failed ones included.

Rules:
- One line per request that reached dispatch (every action call, whatever
  the transport) and per request a transport refused before dispatch
  (401 bad signature, 429 rate limit). Fields: ``time`` (UTC, ISO 8601, ms),
  ``transport``, ``identity`` (non-empty fields only), ``operation``
  (``module.action`` or ``tasks.start:TYPE``), ``module``, ``action``,
  ``params``, ``outcome`` (``ok``/``error``/``cancelled``), ``code`` and
  ``status`` (for errors), ``duration_ms``.
- Secrets never reach the file: a parameter whose JSON Schema says
  ``format: password`` (pydantic ``SecretStr``), ``writeOnly`` or
  ``"secret": true`` (``json_schema_extra={"secret": True}``) is written as
  ``"[redacted]"``. For an unknown module or action there is no schema, so
  only the parameter names are written.
- The file is opened append-only, mode 0600, never through a symlink, and
  rotated by size (``audit.log`` -> ``audit.log.1`` -> ...). Writes are
  unbuffered ``os.write`` calls: when one returns, the line is in the kernel.
- A failed write is loud: an error in the daemon's log, and (``fail_closed``)
  the request fails with 503 and no further request runs until a write
  succeeds again. Syslog is a copy, best effort; the file is the record.

Why not ``logging.handlers.RotatingFileHandler``: it swallows write errors
(``handleError`` prints them to stderr), which is exactly what an audit log
must not do; and its per-record locking and formatting cost more than the
whole write here.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pymgr._fsguard import open_private
from pymgr.core.identity import Identity
from pymgr.errors import PymgrError, Unavailable

__all__ = ["OUTCOME_OK", "REDACTED", "AuditLog", "Auditor", "redact", "secret_params"]

log = logging.getLogger("pymgr.audit")

REDACTED = "[redacted]"
NOT_RECORDED = "[not recorded: unknown action]"
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
_IDENTITY_FIELDS = ("uid", "gid", "pid", "user", "key_id", "cert", "peer")


class AuditLog:
    """The audit file (and an optional syslog copy).

    Args:
        path: the log file; its directory must exist.
        max_bytes: rotate before a write would make the file larger than this.
        backups: rotated files kept (``path.1`` is the newest).
        syslog: a handler that gets a copy of every line, or None.
    """

    def __init__(self, path: Path, *, max_bytes: int, backups: int, syslog: logging.Handler | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._size = 0
        self._syslog = _syslog_logger(syslog) if syslog is not None else None

    def open(self) -> None:
        """Open (or reopen) the file.

        Raises:
            OSError: it cannot be opened for appending.
        """
        self.close()
        fd = open_private(self.path, _OPEN_FLAGS, 0o600)  # never through a link, ours, 0600 whatever the umask
        self._fd = fd
        self._size = os.fstat(fd).st_size

    def write_line(self, line: bytes) -> None:
        """Append one line (rotating first if needed).

        Raises:
            OSError: the line could not be written; the file is closed and
                the next write reopens it.
        """
        try:
            if self._fd is None:
                self.open()
            if self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            written = os.write(self._fd, line)  # type: ignore[arg-type]
            if written != len(line):
                raise OSError(0, f"short write: {written} of {len(line)} bytes")
            self._size += written
        except OSError:
            self.close()
            raise
        if self._syslog is not None:
            self._syslog.info(line.decode().rstrip("\n"))

    def _rotate(self) -> None:
        self.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self.open()

    def close(self) -> None:
        """Close the file (the next write reopens it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def shutdown(self) -> None:
        """Close the file and the syslog connection for good."""
        self.close()
        if self._syslog is not None:
            for handler in self._syslog.handlers:
                handler.close()
            self._syslog.handlers = []
            self._syslog = None


def _syslog_logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger("pymgr.audit.syslog")
    logger.propagate = False  # the daemon's own log must not get every audit line twice
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    return logger


def syslog_handler(address: str, facility: str) -> logging.Handler:
    """A handler that sends lines to the syslog socket at ``address``.

    Raises:
        OSError: nothing listens there.
    """
    # Imported here: logging.handlers (and the socket/queue/pickle modules it pulls in) cost the
    # idle daemon 0.6 MiB of RSS, for the few installs that send the audit to syslog.
    from logging.handlers import SysLogHandler

    handler = SysLogHandler(address=address, facility=facility)
    handler.ident = "pymgr-audit: "
    return handler


# --- redaction --------------------------------------------------------------


def _is_secret(schema: Mapping[str, Any]) -> bool:
    if schema.get("format") == "password" or schema.get("writeOnly") is True or schema.get("secret") is True:
        return True
    return any(_is_secret(s) for key in ("anyOf", "oneOf", "allOf") for s in schema.get(key, ()))


def secret_params(model: type[BaseModel]) -> frozenset[str]:
    """Names of the top-level parameters the model's JSON Schema marks secret."""
    properties = model.model_json_schema().get("properties", {})
    return frozenset(name for name, schema in properties.items() if _is_secret(schema))


def redact(params: Any, secrets: frozenset[str] | None) -> Any:
    """Params as the audit line shows them; ``secrets`` None means the action is unknown."""
    if not isinstance(params, Mapping):
        return f"[not an object: {type(params).__name__}]"
    if secrets is None:
        return dict.fromkeys(params, NOT_RECORDED)
    if not secrets.intersection(params):
        return params
    return {name: REDACTED if name in secrets else value for name, value in params.items()}


# --- the auditor ------------------------------------------------------------


def _identity_fields(identity: Identity) -> dict[str, Any]:
    fields = {name: value for name in _IDENTITY_FIELDS if (value := getattr(identity, name)) is not None}
    if identity.groups:
        fields["groups"] = list(identity.groups)
    return fields


def _peer_only(identity: Identity) -> bool:
    """Whether the identity has no field but its transport and peer (a legacy caller's, usually)."""
    return (
        identity.uid is None and identity.gid is None and identity.pid is None and identity.user is None
        and identity.key_id is None and identity.cert is None and not identity.groups and identity.peer is not None
    )


#: One encoder for every line: ``json.dumps`` with non-default options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
_dumps = _ENCODER.encode


#: The ".mmmZ" ends of timestamps (with the field's closing quote), made once: formatting them per
#: line cost more than the rest of the time field.
_MILLIS = tuple(f'.{n:03d}Z"' for n in range(1000))

#: The ``outcome`` of a call that succeeded, as JSON (``record_json``'s argument on the usual path).
OUTCOME_OK = '"outcome":"ok"'
_OUTCOME_CANCELLED = '"outcome":"cancelled"'

#: Cached JSON fragments (per identity, per operation): bounded, cleared when full.
_CACHE_MAX = 1024


class Auditor:
    """Builds audit lines and writes them, failing closed when told to.

    A line is assembled from cached JSON fragments (the caller's identity,
    the operation's names, the current second's timestamp) and the params'
    JSON; every fragment comes from ``json.dumps``, so the line is JSON. This
    keeps the audit's cost per request to about one ``json.dumps`` of the
    params and one ``write`` (bench/bench_security.py measures it).

    Args:
        audit_log: where lines go.
        fail_closed: a failed write raises ``Unavailable`` (503).
        clock: wall-clock seconds (``time.time``), for the ``time`` field.
    """

    def __init__(self, audit_log: AuditLog, *, fail_closed: bool = True, clock: Any = time.time) -> None:
        self.log = audit_log
        self.fail_closed = fail_closed
        self._clock = clock
        self.broken = False
        self._second = -1
        self._second_text = ""
        #: The caller's fragment per Identity object, by id(): the entry holds the object, so the id
        #: cannot be reused while it is cached (hashing the 9-field Identity cost 0.6 µs a line).
        self._callers: dict[int, tuple[Identity, str]] = {}
        self._operations: dict[tuple[str, str | None, str | None], str] = {}

    def ensure_writable(self) -> None:
        """Before running a request: refuse it while the log is broken.

        Raises:
            Unavailable: the last write failed and the file still cannot be opened.
        """
        if not (self.broken and self.fail_closed):
            return
        try:
            self.log.open()
        except OSError as exc:
            raise self._unavailable(exc) from None
        self.broken = False
        log.warning("audit log %s is writable again; serving requests", self.log.path)

    def record(
        self,
        identity: Identity,
        *,
        operation: str,
        module: str | None,
        action: str | None,
        params: Any,
        error: PymgrError | str | None,
        duration_s: float,
        params_json: str | None = None,
    ) -> None:
        """Write one line.

        Args:
            params_json: ``params`` already as compact JSON, if the caller has it.

        Raises:
            Unavailable: the write failed and ``fail_closed`` is set.
        """
        if error is None:
            outcome = OUTCOME_OK
        elif isinstance(error, str):
            outcome = _OUTCOME_CANCELLED
        else:
            outcome = f'"outcome":"error","code":{_dumps(error.code)},"status":{error.http_status}'
        params_text = params_json if params_json is not None else _dumps(params)
        self.record_json(identity, operation, module, action, params_text, outcome, duration_s)

    def record_json(
        self, identity: Identity, operation: str, module: str | None, action: str | None, params_json: str,
        outcome: str, duration_s: float,
    ) -> None:
        """Write one line whose params and outcome are JSON already (``record`` without its keywords:
        the guard's path for a call that succeeded, 0.4 µs less a line).

        Args:
            params_json: the params (secrets redacted) as compact JSON.
            outcome: ``OUTCOME_OK``, or the outcome fields as ``record`` writes them.

        Raises:
            Unavailable: the write failed and ``fail_closed`` is set.
        """
        second, millis = divmod(int(self._clock() * 1000), 1000)
        if second != self._second:
            self._second = second
            self._second_text = '{"time":"' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = (
            f'{self._second_text}{_MILLIS[millis]},{self._prefix(identity, operation, module, action)},'
            f'"params":{params_json},{outcome},"duration_ms":{duration_s * 1000:.3f}}}\n'
        )
        try:
            self.log.write_line(line.encode())
        except OSError as exc:
            self.broken = True
            log.error("AUDIT LOG WRITE FAILED for %s %s: %s", identity.transport, operation, exc)
            if self.fail_closed:
                raise self._unavailable(exc) from None

    def _prefix(self, identity: Identity, operation: str, module: str | None, action: str | None) -> str:
        """The line's who-and-what fields as JSON: the caller's part and the operation's, each cached."""
        entry = self._callers.get(id(identity))
        if entry is not None and entry[0] is identity:
            who = entry[1]
        else:
            who = self._caller(identity)
        what = self._operations.get((operation, module, action))
        if what is None:
            what = f'"operation":{_dumps(operation)},"module":{_dumps(module)},"action":{_dumps(action)}'
            if module is not None:  # refusals name a path the caller chose: not worth a slot
                if len(self._operations) >= _CACHE_MAX:
                    self._operations.clear()
                self._operations[(operation, module, action)] = what
        return f"{who},{what}"

    def _caller(self, identity: Identity) -> str:
        """``"transport":...,"identity":{...}``; cached per object, but for legacy callers (one object per request)."""
        if identity.transport == "legacy" and _peer_only(identity):
            # A new object per legacy request, with nothing but the peer: 0.6 µs here against 3 µs for the
            # general form below (getattr of every field, a dict, json of it).
            return f'"transport":"legacy","identity":{{"peer":{_dumps(identity.peer)}}}'
        who = f'"transport":{_dumps(identity.transport)},"identity":{_dumps(_identity_fields(identity))}'
        if identity.transport != "legacy":
            if len(self._callers) >= _CACHE_MAX:
                self._callers.clear()
            self._callers[id(identity)] = (identity, who)
        return who

    def _unavailable(self, exc: OSError) -> Unavailable:
        return Unavailable(
            f"the audit log {self.log.path} cannot be written ({exc.strerror or exc}); "
            "pymgr refuses requests it cannot record. Free the disk or fix the file, then retry",
            details={"audit_log": str(self.log.path)},
        )
