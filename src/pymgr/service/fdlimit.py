"""File descriptors: the daemon's limit, and the connection caps that must fit under it.

Rules:
- At start the soft ``RLIMIT_NOFILE`` is raised to the hard one (the soft
  limit is often 1024, the hard one far higher) and the figure is logged.
- Every open connection holds one descriptor, so the caps bound them: the
  sum of every listener's cap (each HTTP listener's ``[http]
  max_connections``, ``[legacy] max_connections``) plus ``[http]
  reserved_fds`` must not pass the soft limit. ``reserved_fds`` is kept for
  the daemon's own files (task store, logs, audit log, keeper link, the
  pipes of running commands) and for the listening sockets themselves; the
  Unix socket's share is its own listener cap, so callers on it can always
  connect while TCP and legacy clients sit at their caps. The audit log's
  readers (``audit.read``) hold ``backups + 1`` files each, at most
  ``[audit] read_concurrency`` of them at once: that product is counted too.
- A config whose caps do not fit is refused at start, naming the keys, the
  sum and the limit. Clamping the caps instead would silently give the
  operator other limits than the ones written down; a refusal at start is
  where every other config error is reported too.
- Connections refused over a cap are closed at once (not lingered on):
  they are not counted, so they must not hold a descriptor for long.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pymgr.config import Config

try:
    import resource
except ModuleNotFoundError:  # pragma: no cover - Windows has no rlimits
    resource = None  # type: ignore[assignment]

__all__ = ["FdBudget", "FdBudgetError", "check_fd_budget", "fd_budget", "raise_nofile", "unit_nofile"]

log = logging.getLogger("pymgr")

#: What the generated systemd unit sets at least (soft and hard): the caps of a config with every listener
#: on at its defaults need ~2400; 65536 leaves room to raise them, far below systemd's own hard default.
UNIT_NOFILE_FLOOR = 65536


class FdBudgetError(Exception):
    """The connection caps do not fit under the descriptor limit; the message names the keys and the fix."""


@dataclass(frozen=True, slots=True)
class FdBudget:
    """The descriptors a config may hold open at once, by the key that bounds them."""

    parts: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(count for _, count in self.parts)

    def describe(self) -> str:
        return " + ".join(f"{name}={count}" for name, count in self.parts) + f" = {self.total}"


def fd_budget(config: Config, http_listeners: int) -> FdBudget:
    """The budget of ``config`` with ``http_listeners`` HTTP listening sockets (Unix and TCP)."""
    http = config.http
    legacy = config.legacy
    parts = [(f"[http] max_connections x {http_listeners} listeners", http.max_connections * http_listeners)]
    if legacy.enabled:
        parts.append(("[legacy] max_connections", legacy.max_connections))
    audit = config.audit
    reads = audit.read_concurrency * (audit.backups + 1)
    parts.append(("[audit] read_concurrency x (backups + 1) files", reads))
    parts.append(("[http] reserved_fds", http.reserved_fds))
    return FdBudget(tuple(parts))


def raise_nofile() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard one; the soft limit in force after (None: no rlimits here)."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.warning(
                "cannot raise the soft RLIMIT_NOFILE from %d to the hard limit %d: %s", soft, hard, exc
            )
            return soft
        log.info("file descriptors: soft RLIMIT_NOFILE raised from %d to the hard limit %d", soft, hard)
        return hard
    log.info("file descriptors: RLIMIT_NOFILE is %s", "unlimited" if soft == resource.RLIM_INFINITY else soft)
    return None if soft == resource.RLIM_INFINITY else soft


def check_fd_budget(budget: FdBudget, limit: int | None) -> None:
    """Refuse caps that could exhaust the descriptors.

    Raises:
        FdBudgetError: naming each cap, the sum and the limit.
    """
    if limit is None or budget.total <= limit:
        return
    raise FdBudgetError(
        f"the connection caps could hold more file descriptors than the daemon may open: {budget.describe()} "
        f"> RLIMIT_NOFILE {limit}; lower those keys, or raise the limit (LimitNOFILE= in the systemd unit, "
        "`ulimit -Hn` in a shell) so that their sum fits"
    )


def unit_nofile(config: Config) -> int:
    """The ``LimitNOFILE=`` of the systemd unit: the config's budget, at least ``UNIT_NOFILE_FLOOR``."""
    http = config.http
    listeners = (http.unix_socket is not None) + (http.tcp is not None)
    return max(UNIT_NOFILE_FLOOR, fd_budget(config, max(listeners, 1)).total)
