"""The whole config file: its root model, its small tables, and how it is read.

The file itself must be one only root or the daemon's user can change
(``_configtrust``); its relative paths are made absolute against its own
directory (``Config.resolve_paths``), joined, never resolved.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from pymgr._configtrust import check_config
from pymgr._fsguard import absolute as _absolute
from pymgr.auth.audit import refused_path_beside
from pymgr.auth.policy import PolicyConfig
from pymgr.auth.policyconfig import validation_context
from pymgr.auth.settings import AuditConfig, AuthConfig, LimitsConfig, check_audit_read_fits
from pymgr.config.fleet import FleetConfig
from pymgr.config.listeners import HttpConfig, LegacyConfig
from pymgr.config.section import Section
from pymgr.config.service import ServiceConfig
from pymgr.config.tasks import TasksConfig
from pymgr.modules.commandspec import CommandConfig


class ModulesConfig(Section):
    """Which modules the daemon serves."""

    #: Entry-point names (group `pymgr.modules`), "package.file:Class" or
    #: "package.file" (its @register-ed classes).
    enabled: list[str] = Field(default_factory=lambda: ["tasks"])
    #: Per-module settings, by module name.
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)


class SecurityConfig(Section):
    """What the config says about itself."""

    #: The secrets written in this file are public (the demo's): accept them in a file
    #: others may read, and say so at every start. False: such a file must be mode 0600.
    public_secrets: bool = False


class Config(Section):
    """The whole configuration file."""

    #: Where the daemon keeps its state: task logs, records.
    state_dir: Path = Path("/var/lib/pymgr")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    http: HttpConfig = Field(default_factory=HttpConfig)
    legacy: LegacyConfig = Field(default_factory=LegacyConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    modules: ModulesConfig = Field(default_factory=ModulesConfig)
    #: HMAC keys of signed TCP requests (docs/security.md).
    auth: AuthConfig = Field(default_factory=AuthConfig)
    #: Who may call what; deny by default (docs/security.md).
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    #: The audit log of every privileged request.
    audit: AuditConfig = Field(default_factory=AuditConfig)
    #: Per-identity rate and params size, for every transport.
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    #: Commands served as actions, by name (docs/security.md, "Commands").
    commands: dict[str, CommandConfig] = Field(default_factory=dict)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    #: This daemon as a fleet member (docs/fleet.md); None: not one, and Redis is never imported.
    fleet: FleetConfig | None = None
    security: SecurityConfig = Field(default_factory=SecurityConfig)

    @model_validator(mode="after")
    def _audit_pages_hold_every_record(self) -> Config:
        check_audit_read_fits(self.audit, self.limits)
        return self

    def resolve_paths(self, base: Path) -> Config:
        """A copy with every relative path made absolute against ``base``."""

        def absolute(p: Path | None) -> Path | None:
            return None if p is None else _absolute(base / p)

        tls = self.http.tls
        if tls is not None:
            tls = tls.model_copy(
                update={
                    "certfile": absolute(tls.certfile),
                    "keyfile": absolute(tls.keyfile),
                    "client_ca": absolute(tls.client_ca),
                }
            )
        http = self.http.model_copy(update={"unix_socket": absolute(self.http.unix_socket), "tls": tls})
        keys = [k.model_copy(update={"secret_file": absolute(k.secret_file)}) for k in self.auth.keys]
        state_dir = _absolute(base / self.state_dir)
        audit_path = absolute(self.audit.path) or state_dir / "audit.log"
        refused_path = absolute(self.audit.refused_path) or refused_path_beside(audit_path)
        types = {
            name: t.model_copy(update={"cwd": absolute(t.cwd) if t.cwd else base})
            for name, t in self.tasks.types.items()
        }
        return self.model_copy(
            update={
                "state_dir": state_dir,
                "http": http,
                "auth": self.auth.model_copy(update={"keys": keys}),
                "audit": self.audit.model_copy(update={"path": audit_path, "refused_path": refused_path}),
                "commands": {
                    name: c.model_copy(update={"cwd": absolute(c.cwd)}) for name, c in self.commands.items()
                },
                "tasks": self.tasks.model_copy(update={"types": types}),
                "fleet": None if self.fleet is None else self.fleet.resolve_paths(absolute),
                "service": self.service.model_copy(
                    update={
                        "pidfile": absolute(self.service.pidfile),
                        "log_file": absolute(self.service.log_file),
                        "read_write_paths": [absolute(p) for p in self.service.read_write_paths],
                    }
                ),
            }
        )


class ConfigError(Exception):
    """The config file cannot be read or does not validate."""


def _line_of(text: str, loc: tuple[Any, ...], value: Any) -> int | None:
    """Best guess at the line of a bad value: where the string value, else the key, first appears."""
    lines = text.splitlines()
    if isinstance(value, str) and value:
        for quoted in (f'"{value}"', f"'{value}'"):
            for number, line in enumerate(lines, start=1):
                if quoted in line:
                    return number
    keys = [part for part in loc if isinstance(part, str)]
    if keys:
        pattern = re.compile(rf"^\s*{re.escape(keys[-1])}\s*=")
        for number, line in enumerate(lines, start=1):
            if pattern.match(line):
                return number
    return None


def load_config(path: Path) -> Config:
    """Read, validate and resolve a TOML config file.

    Raises:
        ConfigError: naming the file and every bad key.
    """
    try:
        with open(path, "rb") as file:
            st = os.fstat(file.fileno())
            text = file.read().decode("utf-8")
        raw = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    if raw.get("http", {}).get("unix_socket") == "":
        raw["http"]["unix_socket"] = None
    try:
        config = Config.model_validate(raw, context=validation_context(raw))
    except ValidationError as exc:
        lines = [f"config {path} is invalid:"]
        for err in exc.errors(include_url=False):
            line = _line_of(text, err["loc"], err.get("input"))
            where = f" (line {line})" if line else ""
            lines.append(f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}{where}")
        raise ConfigError("\n".join(lines)) from None
    try:
        check_config(path, st, config)
    except OSError as exc:
        raise ConfigError(f"config refused: {exc.strerror or exc}") from None
    # The file's own directory, links resolved: check_config has just checked every link and
    # directory on the way to it, so nobody else can change where this points.
    return config.resolve_paths(path.resolve().parent)
