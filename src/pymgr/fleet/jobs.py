"""Fleet jobs: their canonical encoding, their signature, and the one decoder hosts trust.

Pure functions, no I/O (fuzzed by tests/fleet/test_jobs.py).

Rules:
- A job travels as a stream entry of exactly two fields: ``job``, its body
  (canonical JSON: sorted keys, no spaces, ASCII only), and ``sig``, the
  base64 Ed25519 signature of ``SIGNING_CONTEXT + body``. The context binds
  the signature to this use: a signature over the same bytes made for
  something else does not verify here.
- One job, one encoding: a body that is not exactly its own canonical
  re-encoding is refused, so two different byte strings never stand for the
  same signed job, and no parser difference can make a host read something
  other than what was signed.
- Everything a host acts on is inside the signed body: the target (so Redis
  cannot move a job signed for one host into another's stream), the kind,
  the type, the params and the time it was signed (so an old job replayed
  later is refused, ``max_age_s``).
- A *control* job (kind ``control``, type ``stop``, params ``{"job": ID}``)
  asks a host to stop a job it took. It is signed and checked like any job,
  and goes to the host's control stream only (target ``ctl:<host>``; a
  ``ctl:`` target carries a control job and nothing else).
- ``decode`` says whether an entry is a well-formed job; ``check`` whether
  this host may believe it. Every refusal is a ``JobRefused`` whose
  ``reason`` is one short word for the audit and whose message says more.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "JOB_ID_PATTERN",
    "CONTROL_TYPES",
    "KINDS",
    "MAX_JOB_BYTES",
    "SIGNING_CONTEXT",
    "Job",
    "JobRefused",
    "SignedJob",
    "Target",
    "check",
    "decode",
    "encode",
]

#: Prefixed to the body before signing: the signature is for a pymgr fleet job of this version only.
SIGNING_CONTEXT = b"pymgr fleet job v1\n"
#: The body's format version.
JOB_VERSION = 1
#: ``task`` runs a configured task type (``tasks.start``); ``action`` calls ``module.action``;
#: ``control`` acts on a job a host took (``CONTROL_TYPES``).
KINDS = ("task", "action", "control")
#: What a control job can do: ``stop`` the run of the job named by its params' ``job``.
CONTROL_TYPES = ("stop",)
#: A job id (the submitter's ``key``, or a random one): part of Redis key names and of a task key.
JOB_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
#: Largest body a host decodes. A job names a type and small params, like an API call
#: (``[limits] max_params_bytes`` is 64 KiB too); larger data belongs in a file the job names.
MAX_JOB_BYTES = 64 * 1024
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_JOB_ID = re.compile(JOB_ID_PATTERN)
_FIELDS = frozenset({"v", "id", "kind", "type", "params", "target", "submitted_at", "key_id"})
#: An Ed25519 signature is 64 bytes: 88 characters of base64.
_SIG_CHARS = 88


class JobRefused(Exception):
    """An entry that is no job this host may run: ``reason`` is a word for the audit, the message the detail."""

    def __init__(self, reason: str, message: str, job_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        #: The job's id when the body could be read that far (its hash can then be marked refused).
        self.job_id = job_id


@dataclass(frozen=True, slots=True)
class Target:
    """Where a job goes: one host (``host``), any one host with a tag (``tag``), a host's control (``ctl``)."""

    kind: Literal["host", "tag", "ctl"]
    name: str

    @property
    def stream(self) -> str:
        """The Redis stream of this target: ``fleet:host:<id>``, ``fleet:tag:<tag>`` or ``fleet:ctl:<id>``."""
        return f"fleet:{self.kind}:{self.name}"

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class Job:
    """One job, as signed."""

    id: str
    kind: Literal["task", "action", "control"]
    #: A task type (kind ``task``), ``module.action`` (kind ``action``) or ``stop`` (kind ``control``).
    type: str
    params: Mapping[str, Any]
    target: Target
    #: Seconds since the epoch when it was signed.
    submitted_at: float
    #: The key it is signed with; the policy's subject is ``fleet:<key_id>``.
    key_id: str


@dataclass(frozen=True, slots=True)
class SignedJob:
    """A decoded entry whose signature is not checked yet."""

    job: Job
    body: bytes
    signature: bytes


def canonical(job: Job) -> bytes:
    """The body of ``job``: the bytes that are signed.

    Raises:
        ValueError: the params hold something JSON cannot carry exactly (NaN, an infinity).
    """
    data = {
        "v": JOB_VERSION,
        "id": job.id,
        "kind": job.kind,
        "type": job.type,
        "params": job.params,
        "target": str(job.target),
        "submitted_at": job.submitted_at,
        "key_id": job.key_id,
    }
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def encode(job: Job, sign: Callable[[bytes], bytes]) -> dict[str, bytes]:
    """The stream entry of ``job``, signed by ``sign`` (an Ed25519 private key's ``sign``)."""
    body = canonical(job)
    return {"job": body, "sig": base64.b64encode(sign(SIGNING_CONTEXT + body))}


def decode(fields: Mapping[Any, Any], max_bytes: int = MAX_JOB_BYTES) -> SignedJob:
    """Read a stream entry as a job; nothing about it is trusted yet (``check`` does that).

    Raises:
        JobRefused: ``malformed`` (the message says what is wrong) or ``too_large``.
    """
    entry = {_text(name): value for name, value in fields.items()}
    if set(entry) != {"job", "sig"}:
        raise JobRefused("malformed", f"a job entry has the fields job and sig, not {sorted(entry)}")
    body, sig = entry["job"], entry["sig"]
    if not isinstance(body, bytes | str) or not isinstance(sig, bytes | str):
        raise JobRefused("malformed", "a job entry's fields are strings")
    body = body.encode() if isinstance(body, str) else body
    if len(body) > max_bytes:
        raise JobRefused("too_large", f"the job is {len(body)} bytes, more than the {max_bytes} accepted")
    job = _parse(body)
    signature = _signature(sig, job.id)
    try:
        again = canonical(job)
    except ValueError:  # a number JSON reads as an infinity (1e999): no canonical form
        raise JobRefused("malformed", f"job {job.id}: the job holds a number out of range", job.id) from None
    if again != body:
        raise JobRefused("malformed", f"job {job.id}: the job is not in its canonical encoding", job.id)
    return SignedJob(job, body, signature)


def check(
    signed: SignedJob, keys: Mapping[str, Ed25519PublicKey], *, stream: str, now: float, max_age_s: float
) -> Job:
    """The job, if this host may believe it: a known key signed it, for this stream, recently.

    Args:
        keys: the public keys of ``[[fleet.keys]]`` by id.
        stream: the stream the entry was read from.
        now: the current time, seconds since the epoch.
        max_age_s: how far ``submitted_at`` may be from ``now``, either way.

    Raises:
        JobRefused: ``unknown_key``, ``bad_signature``, ``wrong_target`` or ``too_old``.
    """
    job = signed.job
    key = keys.get(job.key_id)
    if key is None:
        known = ", ".join(sorted(keys)) or "(none)"
        raise JobRefused(
            "unknown_key", f"job {job.id} names key {job.key_id!r}; this host knows {known}", job.id
        )
    try:
        key.verify(signed.signature, SIGNING_CONTEXT + signed.body)
    except InvalidSignature:
        raise JobRefused(
            "bad_signature", f"job {job.id}: the signature does not verify with key {job.key_id!r}", job.id
        ) from None
    if job.target.stream != stream:
        raise JobRefused(
            "wrong_target", f"job {job.id} is signed for {job.target}, found in {stream}", job.id
        )
    age_s = now - job.submitted_at
    if abs(age_s) > max_age_s:
        when = f"{age_s:.0f} s ago" if age_s > 0 else f"{-age_s:.0f} s in the future"
        raise JobRefused(
            "too_old", f"job {job.id} was signed {when}; at most {max_age_s:g} s either way", job.id
        )
    return job


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _parse(body: bytes) -> Job:
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise JobRefused("malformed", f"the job is not JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) != _FIELDS:
        fields = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise JobRefused("malformed", f"a job is an object with {sorted(_FIELDS)}, not {fields}")
    job_id = data["id"]
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise JobRefused("malformed", f"the job id must match {JOB_ID_PATTERN}")
    problem = _problem(data)
    if problem is not None:
        raise JobRefused("malformed", f"job {job_id}: {problem}", job_id)
    kind, name = data["target"].split(":", 1)
    return Job(
        id=job_id,
        kind=data["kind"],
        type=data["type"],
        params=data["params"],
        target=Target(kind, name),
        submitted_at=data["submitted_at"],
        key_id=data["key_id"],
    )


def _problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a job's fields (its id is checked), or None."""
    if data["v"] != JOB_VERSION or isinstance(data["v"], bool):
        return f"version {data['v']!r} is not {JOB_VERSION}"
    if data["kind"] not in KINDS:
        return f"kind must be one of {', '.join(KINDS)}"
    if not isinstance(data["type"], str) or not _NAME.fullmatch(data["type"]):
        return "type must be a task type or module.action (letters, digits, '.', '_', '-')"
    if data["kind"] == "action" and data["type"].count(".") != 1:
        return f"an action job's type is module.action, not {data['type']!r}"
    if not isinstance(data["params"], dict):
        return "params must be an object"
    target = data["target"]
    kind, _, name = target.partition(":") if isinstance(target, str) else ("", "", "")
    if kind not in ("host", "tag", "ctl") or not _NAME.fullmatch(name):
        return "target must be host:ID, tag:TAG or ctl:ID"
    if (kind == "ctl") != (data["kind"] == "control"):
        return "a control job goes to a host's control stream (ctl:ID), and nothing else goes there"
    at = data["submitted_at"]
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
        return "submitted_at must be a number of seconds"
    if not isinstance(data["key_id"], str) or not _NAME.fullmatch(data["key_id"]):
        return "key_id must be a key id"
    return _control_problem(data) if data["kind"] == "control" else None


def _control_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a control job's type and params (its target is checked), or None."""
    if data["type"] not in CONTROL_TYPES:
        return f"a control job's type is one of {', '.join(CONTROL_TYPES)}, not {data['type']!r}"
    params = data["params"]
    if set(params) != {"job"} or not isinstance(params["job"], str) or not _JOB_ID.fullmatch(params["job"]):
        return 'a stop\'s params are {"job": ID}, the id of the job to stop'
    return None


def _signature(sig: bytes | str, job_id: str) -> bytes:
    text = sig.decode("ascii", "replace") if isinstance(sig, bytes) else sig
    if len(text) != _SIG_CHARS:
        raise JobRefused("malformed", f"job {job_id}: the signature is not 64 bytes of base64", job_id)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise JobRefused("malformed", f"job {job_id}: the signature is not base64", job_id) from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
