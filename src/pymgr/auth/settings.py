"""The security sections of the config: ``[auth]``, ``[audit]``, ``[limits]``, ``[http.tls]``.

Data only, like the rest of ``pymgr.config`` (which includes these models);
the policy's own section lives with its parser in ``auth/policy.py``. Every
limit has a default that carries its reason and is documented in
docs/security.md ("Limits").
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from pymgr.auth.refusals import DEFAULT_MAX_OPERATIONS, DEFAULT_MAX_SOURCES, DEFAULT_WINDOW_S

#: A key id as it travels in ``X-Pymgr-Key``: short, printable, no separators
#: that could confuse the canonical request or a log line.
KEY_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"

#: Shortest accepted HMAC secret, in bytes. RFC 2104 advises a key at least as
#: long as the hash output (32 bytes for SHA-256); 16 random bytes is the floor
#: below which a guessed or brute-forced key becomes plausible.
MIN_SECRET_BYTES = 16


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyConfig(_Section):
    """One HMAC key a TCP caller may sign with (``[[auth.keys]]``)."""

    #: The key id callers send in ``X-Pymgr-Key``; ``key:ID`` in the policy.
    id: str = Field(pattern=KEY_ID_PATTERN)
    #: The shared secret, inline; or ``secret_file`` instead.
    secret: SecretStr | None = None
    #: A file holding the secret (mode 0600 or 0400, owned by the daemon's user).
    secret_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> KeyConfig:
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError(f"key {self.id!r}: set exactly one of `secret` or `secret_file`")
        if self.secret is not None and len(self.secret.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"key {self.id!r}: secret must be at least {MIN_SECRET_BYTES} bytes long")
        return self


class AuthConfig(_Section):
    """How callers prove who they are (HMAC request signing on TCP; group names on the Unix socket)."""

    keys: list[KeyConfig] = Field(default_factory=list)
    #: Seconds a signed request's timestamp may differ from the daemon's clock,
    #: either way. Five minutes is what AWS SigV4 and Kerberos allow.
    clock_skew_s: float = Field(300.0, gt=0, le=3600)
    #: Most nonces remembered at once (each for its request's 2 x clock_skew_s
    #: window at most); when full, signed requests get 503 until some expire.
    nonce_cache_max: int = Field(100_000, ge=1)
    #: Most live nonces of one key; none gives each key an equal share of nonce_cache_max. A key over
    #: it gets 503 for its own requests only. Quota x keys may not pass nonce_cache_max, so one key
    #: can never fill the cache for the others.
    nonce_quota_per_key: int | None = Field(None, ge=1)
    #: Seconds a Unix caller's user and group names are kept before the user and group database is read
    #: again (SIGHUP drops them at once): removing a user from a group takes effect within this time.
    groups_max_age_s: float = Field(60.0, gt=0, le=86400)

    @model_validator(mode="after")
    def _unique_ids(self) -> AuthConfig:
        seen: set[str] = set()
        for key in self.keys:
            if key.id in seen:
                raise ValueError(f"key id {key.id!r} is declared twice in [[auth.keys]]")
            seen.add(key.id)
        quota = self.nonce_quota_per_key
        if quota is not None and quota * len(self.keys) > self.nonce_cache_max:
            raise ValueError(
                f"nonce_quota_per_key={quota} x {len(self.keys)} keys = {quota * len(self.keys)} is more than "
                f"nonce_cache_max={self.nonce_cache_max}: one key could then fill the cache for the others; "
                "lower the quota or raise nonce_cache_max"
            )
        return self

    def nonce_quota(self) -> int:
        """Each key's quota of live nonces: ``nonce_quota_per_key``, or an equal share of ``nonce_cache_max``."""
        if self.nonce_quota_per_key is not None:
            return self.nonce_quota_per_key
        return max(1, self.nonce_cache_max // max(1, len(self.keys)))


#: What an audit line holds besides its params, at most for any usual caller: time, transport, the
#: caller's fields (a few hundred group names), operation, module, action, outcome and error code. A
#: line past it (a caller in thousands of groups) is reported by a read, never hidden (``too_large_lines``).
AUDIT_LINE_OVERHEAD_BYTES = 64 * 1024


def check_audit_read_fits(audit: AuditConfig, limits: LimitsConfig) -> None:
    """A page must be able to hold the largest record the daemon writes.

    Raises:
        ValueError: ``read_max_scan_bytes`` is less than ``max_params_bytes`` plus the line's overhead.
    """
    needed = limits.max_params_bytes + AUDIT_LINE_OVERHEAD_BYTES
    if audit.read_max_scan_bytes < needed:
        raise ValueError(
            f"[audit] read_max_scan_bytes={audit.read_max_scan_bytes} is less than [limits] max_params_bytes="
            f"{limits.max_params_bytes} plus {AUDIT_LINE_OVERHEAD_BYTES} bytes of the line's other fields: a "
            f"record of the largest params could be read by no page; raise it to at least {needed}"
        )


class AuditConfig(_Section):
    """The audit log: one JSON line per privileged request."""

    #: The log file; ``<state_dir>/audit.log`` if unset.
    path: Path | None = None
    #: Size at which the file is rotated (renamed to ``.1``, ``.2``, ...).
    max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    #: Rotated files kept; the oldest is deleted.
    backups: int = Field(5, ge=0, le=100)
    #: Also send every line to syslog at this Unix socket (e.g. "/dev/log",
    #: which journald serves too); none turns syslog off.
    syslog_address: str | None = None
    #: Syslog facility of those lines.
    syslog_facility: Literal[
        "auth",
        "authpriv",
        "daemon",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ] = "authpriv"
    #: No call runs unless its record can be written: while the log is broken
    #: or the space reserve cannot be held, calls get 503 before they run; a
    #: call that ran but whose record failed gets ``not_recorded``. False only
    #: logs the error and serves on.
    fail_closed: bool = True
    #: Disk space held beside the log (``audit.reserve``) for the records of
    #: running calls, given back when the filesystem is full; calls whose
    #: records would not fit in it wait for others to end (503).
    reserve_bytes: int = Field(1024 * 1024, ge=64 * 1024)
    #: Refused requests (401, 403, 404, 429 ...) are counted here, one line per
    #: source per window; ``<stem>-refused<suffix>`` beside ``path`` if unset.
    refused_path: Path | None = None
    #: Size at which the refusals' file is rotated (on its own).
    refused_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    #: Rotated refusals' files kept.
    refused_backups: int = Field(5, ge=0, le=100)
    #: Seconds of refusals counted on one line per source.
    refused_window_s: float = Field(DEFAULT_WINDOW_S, gt=0, le=3600)
    #: Sources with a line of their own per window; the rest share one line.
    refused_max_sources: int = Field(DEFAULT_MAX_SOURCES, ge=1, le=100_000)
    #: Distinct operations named on one line; the rest are counted together.
    refused_max_operations: int = Field(DEFAULT_MAX_OPERATIONS, ge=1, le=1000)
    #: Records a page of ``audit.read`` (``GET /v1/audit``) holds when the caller gives no limit.
    read_limit: int = Field(100, ge=1, le=10_000)
    #: The largest ``limit`` a caller may ask for: a page is one reply, built in memory.
    read_max_limit: int = Field(1000, ge=1, le=10_000)
    #: Bytes of log lines one page reads at most (a rare filter pages on with a cursor): 4 MiB is
    #: about 10,000 records, some tens of milliseconds of a thread, never the event loop.
    read_max_scan_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    #: Pages read at once; more wait their turn before opening a file. Each holds ``backups + 1``
    #: descriptors while it reads (counted in the descriptor budget, ``service/fdlimit.py``) and a
    #: thread; two keep a host's reads going without letting a burst of them take every descriptor.
    read_concurrency: int = Field(2, ge=1, le=64)

    @model_validator(mode="after")
    def _read_limits(self) -> AuditConfig:
        if self.read_limit > self.read_max_limit:
            raise ValueError(
                f"read_limit={self.read_limit} is more than read_max_limit={self.read_max_limit}"
            )
        return self


class LimitsConfig(_Section):
    """Per-identity limits shared by every transport."""

    #: Requests per second each identity may sustain (token bucket refill rate).
    rate_per_s: float = Field(50.0, gt=0)
    #: Requests an identity may send in a burst before ``rate_per_s`` applies.
    rate_burst: int = Field(100, ge=1)
    #: Identities whose buckets are tracked at once; more evicts full buckets first.
    max_tracked_identities: int = Field(10_000, ge=1)
    #: Largest params object of one call, as JSON bytes (every transport).
    max_params_bytes: int = Field(64 * 1024, ge=2)


class TlsConfig(_Section):
    """TLS on the TCP listener (``[http.tls]``)."""

    #: The server's certificate chain (PEM).
    certfile: Path
    #: Its private key (PEM).
    keyfile: Path
    #: CA bundle that client certificates are verified against; a verified
    #: client certificate identifies the caller as ``cert:CN``.
    client_ca: Path | None = None
    #: Refuse the TLS handshake of a client without a valid certificate
    #: (otherwise it may still sign its requests).
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _ca_for_required(self) -> TlsConfig:
        if self.require_client_cert and self.client_ca is None:
            raise ValueError(
                "require_client_cert = true needs client_ca, the CA that signs client certificates"
            )
        return self
