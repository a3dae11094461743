"""The audit log: a record of every call that ran, and a count of every request refused.

Rules:
- One line per call that ran (every check passed and the action was
  invoked, whatever its outcome), over every transport, in the audit file
  (``auditfile.py``). Fields: ``time`` (UTC, ISO 8601, ms), ``transport``,
  ``identity`` (non-empty fields only; a delegate's call adds ``person``
  and ``roles`` to the delegate's own), ``operation`` (``module.action`` or
  ``tasks.start:TYPE``), ``module``, ``action``, ``params``, ``outcome``
  (``ok``/``error``/``cancelled``), ``code`` and ``status`` (for errors),
  ``duration_ms``.
- A request refused before its action ran (bad signature, rate limit,
  denial, unknown action, bad or oversized params, no room for its record)
  is counted, per source and second, in a file of its own (``refusals.py``):
  no flood of refusals can rotate a call's record out of the audit file.
- Secrets never reach the file: a parameter whose JSON Schema says
  ``format: password`` (pydantic ``SecretStr``), ``writeOnly`` or
  ``"secret": true`` (``json_schema_extra={"secret": True}``) is written as
  ``"[redacted]"`` (``pymgr._secretparam``: the console hides the same ones). For an unknown module or action there is no schema, so
  only the parameter names are written.
- No action runs unless its record can be written: ``hold`` is called once
  every check passed, just before the action runs. It refuses (503) while
  the log is broken or the disk has no room, and holds room for the record
  in the space reserve (``_auditreserve.py``); the record releases it.
- A failed write is loud: an error in the daemon's log, and (``fail_closed``)
  no further call runs until the log takes a record again. A call that ran
  but whose record could not be written is answered ``NotRecorded`` (the
  guard says so), never as if it had not run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic_core
from pydantic import BaseModel

from pymgr._secretparam import is_secret
from pymgr.auth._auditreserve import SpaceReserve
from pymgr.auth.auditfile import AuditLog, syslog_handler
from pymgr.auth.refusals import RefusalTally, iso_time
from pymgr.core.identity import Identity
from pymgr.errors import PymgrError, Unavailable

__all__ = [
    "OUTCOME_OK",
    "REDACTED",
    "AuditLog",
    "Auditor",
    "redact",
    "refused_path_beside",
    "secret_params",
    "syslog_handler",
]

log = logging.getLogger("pymgr.audit")

REDACTED = "[redacted]"
NOT_RECORDED = "[not recorded: unknown action]"
_IDENTITY_FIELDS = ("uid", "gid", "pid", "user", "key_id", "cert", "fleet_key", "peer", "person")
#: A record's bytes besides the caller, the params and the names: the time, the field names, an
#: outcome with its code, the duration, and a task type in the operation's name (config names, short).
_RECORD_OVERHEAD_BYTES = 512
#: The params' share of a record whose params are not JSON (dispatch refuses them first, as a rule;
#: the record then holds them as ``str()`` would, bounded by the params bound itself).
_UNSIZED_PARAMS_BYTES = 64 * 1024
#: Room the reserve keeps beyond the records it holds: a filesystem gives space by whole blocks
#: (4 KiB on ext4 and tmpfs; 16 KiB is the largest common one), so the last record may start one.
_BLOCK_SLACK_BYTES = 16 * 1024


def refused_path_beside(path: Path) -> Path:
    """Where refusals are counted when no path is configured: ``audit.log`` -> ``audit-refused.log``."""
    return path.with_name(f"{path.stem}-refused{path.suffix}")


# --- redaction --------------------------------------------------------------


def secret_params(model: type[BaseModel]) -> frozenset[str]:
    """Names of the top-level parameters the model's JSON Schema marks secret."""
    properties = model.model_json_schema().get("properties", {})
    return frozenset(name for name, schema in properties.items() if is_secret(schema))


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
    if identity.person is not None:  # a delegate's call: the person and roles beside the delegate's fields
        fields["roles"] = list(identity.roles)
    return fields


def _caller_json(identity: Identity) -> str:
    """The caller's part of a line; pydantic-core writes the same compact JSON as ``_dumps``, at a fifth of the cost."""
    transport = pydantic_core.to_json(identity.transport).decode()
    return f'"transport":{transport},"identity":{pydantic_core.to_json(_identity_fields(identity)).decode()}'


#: One encoder for every line: ``json.dumps`` with non-default options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
_dumps = _ENCODER.encode


#: The ``outcome`` of a call that succeeded, as JSON.
OUTCOME_OK = '"outcome":"ok"'
_OUTCOME_CANCELLED = '"outcome":"cancelled"'

#: Cached JSON fragments (per identity, per operation): bounded, cleared when full.
_CACHE_MAX = 1024


class Auditor:
    """Builds audit lines and writes them, failing closed when told to; counts refusals.

    A line is assembled from JSON fragments (the time, the caller's identity
    and the operation's names, those two kept per caller and per operation)
    and the params' JSON; every fragment is written by a JSON encoder, so the
    line is JSON. The params' JSON is the one the pipeline bounded them with.

    Args:
        audit_log: where the records of calls that ran go.
        fail_closed: no call runs while its record might not be written (``hold``
            raises ``Unavailable``, 503), and a failed write raises ``Unavailable``.
        clock: wall-clock seconds (``time.time``), for the ``time`` field.
        refusals: where refusals are counted; None counts them with the defaults
            in ``refused_path_beside(audit_log.path)``.
    """

    def __init__(
        self,
        audit_log: AuditLog,
        *,
        fail_closed: bool = True,
        clock: Any = time.time,
        refusals: RefusalTally | None = None,
    ) -> None:
        self.log = audit_log
        self.fail_closed = fail_closed
        self._clock = clock
        if refusals is None:
            refused_log = AuditLog(
                refused_path_beside(audit_log.path), max_bytes=audit_log.max_bytes, backups=audit_log.backups
            )
            refusals = RefusalTally(refused_log, clock=clock)
        self.refusals = refusals
        self.broken = False
        #: Calls that ran whose record could not be written, since the log broke.
        self._unrecorded = 0
        self._broken_since = 0.0
        #: Bytes of the records of calls let run and not yet written.
        self._held = 0
        #: The time field up to its second, and that second: strftime once a second, not once a line
        #: (4.5 µs a line here, 6 % of a control call's server CPU in a same-run A/B).
        self._second = -1
        self._second_text = ""
        #: The caller's fragment per identity (a busy caller makes the same one all day).
        self._callers: dict[Identity, str] = {}
        self._operations: dict[tuple[str, str | None, str | None], str] = {}

    def hold(
        self, identity: Identity, module: str, action: str, params_json: str | None, *, who: str | None = None
    ) -> int:
        """Once every check passed, just before the action runs: make sure its record can be written.

        With ``fail_closed``, refuse the call while the log is broken (a probe line must
        go through first), while the space reserve cannot be held, or while the records
        of running calls would not fit in it with this one's.

        Returns:
            The bytes held for the record (at most what it takes): ``release`` them once it is written.

        Raises:
            Unavailable: naming the file and what to free or raise.
        """
        if who is None:
            who = self.caller_json(identity)
        if params_json is None:
            params_json = "x" * _UNSIZED_PARAMS_BYTES
        size = _RECORD_OVERHEAD_BYTES + len(who) + len(params_json) + 3 * (len(module) + len(action))
        if not (who.isascii() and params_json.isascii() and module.isascii() and action.isascii()):
            size *= 4  # UTF-8 takes at most 4 bytes a character
        if self.fail_closed:
            if self.broken:
                self._resume()
            reserve = self.log.reserve
            if reserve is not None:
                if not reserve.full:
                    self._refill(reserve)
                if self._held + size > reserve.size_bytes - _BLOCK_SLACK_BYTES:
                    raise Unavailable(
                        f"the records of running calls would not fit in the audit space reserve "
                        f"(reserve_bytes={reserve.size_bytes}; {self._held} bytes held, this call's "
                        f"record up to {size}); retry when calls have ended, or raise [audit] reserve_bytes",
                        details={"audit_log": str(self.log.path), "limit": reserve.size_bytes},
                    )
        self._held += size
        return size

    def release(self, record_bytes: int) -> None:
        """Give back what ``hold`` held, once the call's record is written (or failed)."""
        self._held -= record_bytes

    def refused(
        self, source: str, transport: str, operation: str, error: PymgrError | str, person: str | None = None
    ) -> None:
        """Count a request refused before its action ran (never raises: ``refusals.py`` logs failures)."""
        code = error if isinstance(error, str) else error.code
        self.refusals.add(source, transport, operation, code, person)

    def close(self) -> None:
        """Write the counted refusals, then close every file (shutdown)."""
        self.refusals.close()
        self.refusals.log.shutdown()
        self.log.shutdown()

    def _resume(self) -> None:
        """The log broke: write a line that says so, or refuse (the write is the probe)."""
        line = (
            _dumps(
                {
                    "time": iso_time(self._clock()),
                    "event": "audit log writable again",
                    "broken_since": iso_time(self._broken_since),
                    "unrecorded_calls": self._unrecorded,
                }
            )
            + "\n"
        )
        try:
            self.log.write_line(line.encode())
        except OSError as exc:
            raise self._unavailable(exc) from None
        self.broken = False
        self._unrecorded = 0
        log.warning("audit log %s is writable again; serving requests", self.log.path)

    def _refill(self, reserve: SpaceReserve) -> None:
        try:
            held = reserve.refill()
        except OSError as exc:
            raise self._unavailable(exc) from None
        if not held:
            raise Unavailable(
                f"the filesystem of the audit log {self.log.path} has no room for its space reserve "
                f"({reserve.size_bytes} bytes in {reserve.path}); pymgr runs no call it might not record. "
                "Free space on it, then retry",
                details={"audit_log": str(self.log.path)},
            )
        log.warning("audit space reserve %s is held again; calls run again", reserve.path)

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
        who: str | None = None,
    ) -> None:
        """Write one line.

        Args:
            params_json: ``params`` already as compact JSON, if the caller has it.
            who: ``caller_json(identity)``, if the caller has it.

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
        line = (
            f'{{"time":"{self._time_text()}",{self._prefix(identity, operation, module, action, who)},'
            f'"params":{params_text},{outcome},"duration_ms":{duration_s * 1000:.3f}}}\n'
        )
        try:
            self.log.write_line(line.encode())
        except OSError as exc:
            if not self.broken:
                self.broken = True
                self._broken_since = self._clock()
            self._unrecorded += 1
            log.error("AUDIT LOG WRITE FAILED for %s %s: %s", identity.transport, operation, exc)
            if self.fail_closed:
                raise self._unavailable(exc) from None

    def _time_text(self) -> str:
        """Now as ``iso_time`` writes it (UTC, ISO 8601, milliseconds)."""
        second, millis = divmod(int(self._clock() * 1000), 1000)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{millis:03d}Z"

    def _prefix(
        self,
        identity: Identity,
        operation: str,
        module: str | None,
        action: str | None,
        who: str | None = None,
    ) -> str:
        """The line's who-and-what fields as JSON: the caller's part and the operation's, each cached."""
        if who is None:
            who = self.caller_json(identity)
        what = self._operations.get((operation, module, action))
        if what is None:
            what = f'"operation":{_dumps(operation)},"module":{_dumps(module)},"action":{_dumps(action)}'
            if module is not None:  # refusals name a path the caller chose: not worth a slot
                if len(self._operations) >= _CACHE_MAX:
                    self._operations.clear()
                self._operations[(operation, module, action)] = what
        return f"{who},{what}"

    def caller_json(self, identity: Identity) -> str:
        """The caller's part of a line, ``"transport":...,"identity":{...}`` with its non-empty fields (for
        ``hold`` and ``record`` of one call); kept per caller, but for legacy callers (a new peer port each
        request: never seen again)."""
        if identity.transport == "legacy":
            return _caller_json(identity)
        who = self._callers.get(identity)
        if who is None:
            if len(self._callers) >= _CACHE_MAX:
                self._callers.clear()
            who = self._callers[identity] = _caller_json(identity)
        return who

    def _unavailable(self, exc: OSError) -> Unavailable:
        return Unavailable(
            f"the audit log {self.log.path} cannot be written ({exc.strerror or exc}); "
            "pymgr refuses requests it cannot record. Free the disk or fix the file, then retry",
            details={"audit_log": str(self.log.path), "reason": exc.strerror or str(exc)},
        )
