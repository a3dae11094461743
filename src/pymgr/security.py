"""Wiring the security model into the daemon: keys, policy, audit, rates, the call pipeline.

``build_security`` turns the config's ``[auth]``, ``[policy]``, ``[audit]``
and ``[limits]`` into the auth objects the daemon serves with; everything
that can be wrong (a bad rule, a key file readable by others, an audit log
that cannot be opened, a TCP listener nobody could authenticate on) fails
here, before any socket accepts. The servers are the daemon's to build
(``daemon.py``). docs/security.md describes the model; each part lives in
its own file under ``auth/``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymgr.auth._auditreserve import SpaceReserve
from pymgr._fsguard import UnsafePathError, check_trusted
from pymgr.auth.audit import AuditLog, Auditor, syslog_handler
from pymgr.auth.refusals import RefusalTally
from pymgr.auth.guard import EdgeGuard
from pymgr.auth.pipeline import GuardedDispatcher
from pymgr.auth.keys import KeyLoadError, load_keys
from pymgr.auth.peercred import set_names_max_age
from pymgr.auth.policy import Policy, PolicyError
from pymgr.auth.ratelimit import RateLimiter
from pymgr.auth.nonces import NonceCache
from pymgr.auth.signing import Verifier
from pymgr.config import Config
from pymgr.core.registry import Registry
from pymgr.metrics import Metrics
from pymgr.modules.tasks import TASK_OPERATIONS
from pymgr.transport.listeners import is_loopback

__all__ = ["Security", "SecurityError", "build_security"]

log = logging.getLogger("pymgr.security")


class SecurityError(Exception):
    """The security config cannot be put in force; the message says what to fix."""


@dataclass
class Security:
    """The auth objects of one running daemon."""

    policy: Policy | None
    auditor: Auditor | None
    #: The rate of each caller and the count of what an edge refuses itself, for every edge.
    edge: EdgeGuard
    verifier: Verifier | None
    max_params_bytes: int
    #: Builds the policy of a (reloaded) config, with the keys and the task manager of this daemon.
    policy_factory: Callable[[Config], Policy] | None = None

    def dispatcher(self, registry: Registry, metrics: Metrics | None = None) -> GuardedDispatcher:
        """The call pipeline every edge calls: audit, params bound, metrics, policy; it can reload the policy."""
        return GuardedDispatcher(
            registry,
            policy=self.policy,
            auditor=self.auditor,
            max_params_bytes=self.max_params_bytes,
            metrics=metrics,
            policy_factory=self.policy_factory,
        )

    def close(self) -> None:
        if self.auditor is not None:
            self.auditor.close()


def build_security(config: Config, registry: Registry, tasks: Any) -> Security:
    """Everything the daemon needs to check callers, from the config.

    Args:
        tasks: the TaskManager (the policy asks it a task's type by id).

    Raises:
        SecurityError: naming the rule, key, file or setting at fault.
    """
    try:
        keys = load_keys(config.auth)
    except KeyLoadError as exc:
        raise SecurityError(str(exc)) from None

    # The fleet's keys are read once, by the fleet agent at start: a reload does not change them either.
    fleet_keys = [key.id for key in config.fleet.keys] if config.fleet is not None else []

    def policy_of(cfg: Config) -> Policy:
        # The keys are the daemon's (a reload does not change [auth]): a rule naming another key is refused.
        policy = Policy(
            cfg.policy,
            registry,
            key_ids=keys,
            fleet_key_ids=fleet_keys,
            task_types=cfg.tasks.types,
            task_type_of=_type_lookup(tasks),
            task_operations=TASK_OPERATIONS,
            owner_uid=os.geteuid(),
        )
        _log_policy(cfg, policy)
        return policy

    try:
        policy = policy_of(config)
    except PolicyError as exc:
        raise SecurityError(str(exc)) from None
    _check_tcp_auth(config, keys)
    set_names_max_age(config.auth.groups_max_age_s)
    auditor = _auditor(config)
    limits = config.limits
    limiter = RateLimiter(limits.rate_per_s, limits.rate_burst, max_keys=limits.max_tracked_identities)
    return Security(
        policy=policy,
        auditor=auditor,
        edge=EdgeGuard(limiter, auditor),
        verifier=_verifier(config, keys),
        max_params_bytes=limits.max_params_bytes,
        policy_factory=policy_of,
    )


def _verifier(config: Config, keys: dict[str, bytes]) -> Verifier | None:
    """The signature check of TCP requests; None when no key is configured (certificates only)."""
    if not keys:
        return None
    nonces = NonceCache(config.auth.nonce_cache_max, per_key=config.auth.nonce_quota())
    return Verifier(keys, clock_skew_s=config.auth.clock_skew_s, nonces=nonces, clock=time.time)


def _type_lookup(tasks: Any) -> Any:
    def task_type_of(task_id: int) -> str | None:
        if tasks is None:
            return None  # no type can be known: the policy denies
        # NotFound (no such task) reaches the caller as 404 before the action runs.
        return str(tasks.get(task_id).type)

    return task_type_of


def _log_policy(config: Config, policy: Policy) -> None:
    if not config.policy.rules:
        log.warning("the policy has no rules: every call is denied (deny by default); see docs/security.md")
    for note in policy.startup_notes():
        log.warning("%s", note)


def _check_tcp_auth(config: Config, keys: dict[str, bytes]) -> None:
    if config.http.tcp is None:
        if config.http.tls is not None:
            log.warning("[http.tls] is set but http.tcp is not: TLS applies only to the TCP listener")
        return
    tls = config.http.tls
    if not keys and (tls is None or tls.client_ca is None):
        raise SecurityError(
            f"http.tcp = {config.http.tcp!r} but no caller could authenticate on it: add [[auth.keys]] "
            "(signed requests) or [http.tls] client_ca (client certificates)"
        )
    host = config.http.tcp.rpartition(":")[0].strip("[]")
    if tls is None and not is_loopback(host):
        log.warning(
            "TCP listener %s has no TLS: signed requests cannot be forged or replayed, but their bodies "
            "and replies travel in clear; set [http.tls]",
            config.http.tcp,
        )


def _auditor(config: Config) -> Auditor:
    """The audit log, its space reserve and the refusals' file, from ``[audit]``.

    Raises:
        SecurityError: a file cannot be opened, or syslog is not there.
    """
    audit = config.audit
    if audit.path is None or audit.refused_path is None:
        raise RuntimeError("audit paths are resolved by load_config; a Config built by hand must set them")
    handler = None
    if audit.syslog_address is not None:
        try:
            handler = syslog_handler(audit.syslog_address, audit.syslog_facility)
        except OSError as exc:
            raise SecurityError(
                f"[audit] syslog_address {audit.syslog_address!r}: {exc.strerror or exc}"
            ) from None
    # Named apart from the log (audit.log -> audit.reserve): a glob of the log and its rotations must not meet it.
    reserve = SpaceReserve(audit.path.with_suffix(".reserve"), audit.reserve_bytes)
    audit_log = AuditLog(
        audit.path, max_bytes=audit.max_bytes, backups=audit.backups, syslog=handler, reserve=reserve
    )
    refused_log = AuditLog(
        audit.refused_path, max_bytes=audit.refused_max_bytes, backups=audit.refused_backups, syslog=handler
    )
    for directory in dict.fromkeys((audit.path.parent, audit.refused_path.parent)):
        _trusted_audit_dir(directory)
    for path, opening in (
        (audit.path, audit_log.open),
        (reserve.path, reserve.open),
        (audit.refused_path, refused_log.open),
    ):
        try:
            opening()
        except OSError as exc:
            raise SecurityError(f"cannot open the audit file {path}: {exc.strerror or exc}") from None
    if not reserve.full:
        log.error(
            "the filesystem of the audit log %s has no room for its space reserve (%d bytes): every call is "
            "refused (503) until there is",
            audit.path,
            audit.reserve_bytes,
        )
    refusals = RefusalTally(
        refused_log,
        window_s=audit.refused_window_s,
        max_sources=audit.refused_max_sources,
        max_operations=audit.refused_max_operations,
    )
    return Auditor(audit_log, fail_closed=audit.fail_closed, refusals=refusals)


def _trusted_audit_dir(directory: Path) -> None:
    """Create the audit files' directory (0700); refuse one that others could write."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Whoever can write the directory could delete the record or swap the file.
        check_trusted(directory)
    except UnsafePathError as exc:
        raise SecurityError(
            f"the audit log's directory is refused: {exc.strerror}; or give the audit log a directory of its own"
        ) from None
    except OSError as exc:
        raise SecurityError(
            f"cannot create the audit log's directory {directory}: {exc.strerror or exc}"
        ) from None
