"""SIGHUP: read the config file again and apply what can change in a running daemon.

Rules:
- Validate everything first, apply after: a file that does not load, or a
  task type that does not compile, is refused as a whole and logged with the
  reason; the daemon keeps running on the config it had. Nothing is closed:
  connections, in-flight requests and running tasks are untouched.
- Applied live (``RELOADABLE``): the log level, ``[tasks]`` (task types and
  their settings, through ``TaskManager.reload``), ``[modules.settings]``
  (each module's ``context.settings`` is replaced; modules read it per call),
  and ``[policy]`` when the dispatcher can swap it (``POLICY_HOOK``: the
  daemon's can; a dispatcher without it reports a policy change as needing
  a restart). A policy that does not build refuses the whole reload.
- Everything else (listeners, ``state_dir``, ``[modules] enabled``) needs a
  restart: the log names each changed key and says so, and the daemon keeps
  the old values, so the next reload reports them again until a restart.
  ``[service]`` is read by ``pymgr service install`` and ``pymgr daemon``,
  not by the running daemon.
- Every SIGHUP drops the Unix callers' user and group names
  (``peercred.forget_names``), even when the file is refused: the next
  request of each caller reads the user and group database again.
- One log line says what changed (or that nothing did); systemd sees
  ``RELOADING=1`` then ``READY=1`` with a ``STATUS=`` line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymgr.auth.peercred import forget_names
from pymgr.auth.policy import PolicyError
from pymgr.config import Config, ConfigError, load_config
from pymgr.service.hooks import Runtime
from pymgr.service.logsetup import set_level
from pymgr.service.sdnotify import Notifier
from pymgr.tasks.tasktypes import compile_types

log = logging.getLogger("pymgr.reload")

#: Top-level config keys a reload applies. ``modules`` only for its settings.
RELOADABLE = ("log_level", "tasks", "modules")

#: The dispatcher method that swaps in a new policy: ``reload_policy(config:
#: Config) -> list[str]`` (the changes, for the log), raising ``PolicyError``
#: before it changes anything when the new policy does not build. The
#: policy is reloadable exactly when the dispatcher has it.
POLICY_HOOK = "reload_policy"

#: Keys read by the service commands, never by the running daemon.
SERVICE_KEYS = ("service",)


@dataclass
class ReloadResult:
    """What one reload did."""

    applied: bool
    #: Human-readable changes that took effect.
    changes: list[str] = field(default_factory=list)
    #: Changed keys that need a restart (not applied).
    restart: list[str] = field(default_factory=list)
    #: Why the reload was refused.
    error: str | None = None


class Reloader:
    """Reloads ``config_path`` into a running daemon's ``runtime``."""

    def __init__(self, config_path: Path, runtime: Runtime, notifier: Notifier | None = None) -> None:
        self.config_path = config_path
        self.runtime = runtime
        self.notifier = notifier if notifier is not None else Notifier(None)

    def reload(self) -> ReloadResult:
        """Read, validate and apply the config file (the SIGHUP handler)."""
        self.notifier.reloading()
        log.info("SIGHUP: reloading config %s; user and group names are read again", self.config_path)
        forget_names()  # whatever the config holds: a removed group membership must stop working now
        try:
            new = load_config(self.config_path)
            compile_types(new.tasks)  # a bad argv template refuses the whole reload
        except ConfigError as exc:
            log.error("reload refused, the daemon keeps its current config: %s", exc)
            self.notifier.ready(
                "reload refused: config invalid (see the log); running on the previous config"
            )
            return ReloadResult(applied=False, error=str(exc))
        old = self.runtime.config
        restart = restart_needed(old, new, self._reloadable())
        try:
            changes = self._apply(old, new)
        except ConfigError as exc:  # TaskManager.reload validates again; nothing was applied
            log.error("reload refused, the daemon keeps its current config: %s", exc)
            self.notifier.ready("reload refused (see the log); running on the previous config")
            return ReloadResult(applied=False, error=str(exc))
        self.runtime.config = merge(old, new, self._reloadable())
        _log_outcome(self.config_path, changes, restart)
        summary = f"reloaded: {len(changes)} change(s)" + (
            f", {len(restart)} need a restart" if restart else ""
        )
        self.notifier.ready(summary)
        return ReloadResult(applied=True, changes=changes, restart=restart)

    def _reloadable(self) -> tuple[str, ...]:
        has_policy = (
            callable(getattr(self.runtime.dispatcher, POLICY_HOOK, None)) and "policy" in Config.model_fields
        )
        return (*RELOADABLE, "policy") if has_policy else RELOADABLE

    def _apply(self, old: Config, new: Config) -> list[str]:
        # The policy first: with the task types checked already, it is the only step that may still refuse.
        changes = _reload_policy(self.runtime, old, new) if "policy" in self._reloadable() else []
        changes += _reload_tasks(self.runtime, old, new)
        changes += _reload_settings(self.runtime, old, new)
        if new.log_level != old.log_level:
            set_level(new.log_level)
            changes.append(f"log_level {old.log_level} -> {new.log_level}")
        return changes


def restart_needed(old: Config, new: Config, reloadable: tuple[str, ...] = RELOADABLE) -> list[str]:
    """The changed keys a reload does not apply (``[service]`` excluded)."""
    keys = [
        name
        for name in type(old).model_fields
        if name not in reloadable and name not in SERVICE_KEYS and getattr(old, name) != getattr(new, name)
    ]
    keys += [f"{name}.{sub}" for name, sub in _changed_subkeys(old, new, keys)]
    if old.modules.enabled != new.modules.enabled:
        keys.append("modules.enabled")
    return keys


def _changed_subkeys(old: Config, new: Config, keys: list[str]) -> list[tuple[str, str]]:
    """For changed sections, the sub-keys that differ (``http.tcp``), to name them in the log."""
    found = []
    for name in list(keys):
        a, b = getattr(old, name), getattr(new, name)
        fields = getattr(type(a), "model_fields", None)
        if fields is None or type(a) is not type(b):
            continue
        keys.remove(name)
        found += [(name, sub) for sub in fields if getattr(a, sub) != getattr(b, sub)]
    return found


def merge(old: Config, new: Config, reloadable: tuple[str, ...] = RELOADABLE) -> Config:
    """The config in force after a reload: the new reloadable keys, the old rest."""
    update: dict[str, Any] = {name: getattr(new, name) for name in reloadable if name != "modules"}
    update["modules"] = old.modules.model_copy(update={"settings": new.modules.settings})
    return old.model_copy(update=update)


def _reload_tasks(runtime: Runtime, old: Config, new: Config) -> list[str]:
    if new.tasks == old.tasks:
        return []
    return [f"tasks: {change}" for change in runtime.tasks.reload(new.tasks)]


def _reload_settings(runtime: Runtime, old: Config, new: Config) -> list[str]:
    registry = runtime.dispatcher.registry
    changes = []
    for name in registry.names():
        before, after = old.modules.settings.get(name, {}), new.modules.settings.get(name, {})
        if before != after:
            registry.module(name).context.settings = after
            changes.append(f"modules.settings.{name} changed")
    return changes


def _reload_policy(runtime: Runtime, old: Config, new: Config) -> list[str]:
    """Swap in the new ``[policy]`` through the dispatcher's ``POLICY_HOOK``."""
    if getattr(old, "policy", None) == getattr(new, "policy", None):
        return []
    try:
        return [f"policy: {change}" for change in getattr(runtime.dispatcher, POLICY_HOOK)(new)]
    except PolicyError as exc:
        raise ConfigError(f"[policy]: {exc}") from None


def _log_outcome(path: Path, changes: list[str], restart: list[str]) -> None:
    if changes:
        log.info("config reloaded from %s: %s", path, "; ".join(changes))
    else:
        log.info("config reloaded from %s: nothing that a reload applies has changed", path)
    if restart:
        log.warning(
            "config %s changes %s: these take effect only after a restart "
            "(systemctl restart pymgr, or pymgr daemon restart); the daemon keeps the old values until then",
            path,
            ", ".join(restart),
        )
