"""The daemon's configuration: pydantic models that hold data only.

Adding a setting means adding one field here (with its default and its
reason); nothing else parses the file. Relative paths in a config file are
resolved against the directory of that file, so a daemon started from any
working directory (systemd starts it in /) reads the same paths.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError, field_validator

from pymgr.core.paramspec import ParamSpec


def _octal_mode(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return int(value, 8)
        except ValueError:
            raise ValueError(f"must be an octal mode such as \"0660\", not {value!r}") from None
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpConfig(_Section):
    """The native HTTP/JSON API."""

    #: Unix socket path; empty string turns the Unix listener off.
    unix_socket: Path | None = Path("/run/pymgr/pymgr.sock")
    #: File mode of the socket (octal); 0660 lets only the owner and the group connect.
    socket_mode: Annotated[int, BeforeValidator(_octal_mode), Field(ge=0, le=0o777)] = 0o660
    #: Group that owns the socket (name); none keeps the daemon's group.
    socket_group: str | None = None
    #: Optional TCP listener, "host:port" (port 0 picks a free one).
    tcp: str | None = None
    #: Largest request body accepted (bytes); more gets 413.
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    #: Seconds an idle keep-alive connection stays open.
    keepalive_timeout_s: float = Field(5.0, gt=0)
    #: Seconds to finish in-flight requests on shutdown before cancelling them.
    shutdown_timeout_s: float = Field(10.0, ge=0)

    @field_validator("tcp")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"must be \"host:port\" with a port 0-65535, not {value!r}")
        return value


class LegacyConfig(_Section):
    """The 2014 design's `key:value` line protocol (opt-in)."""

    enabled: bool = False
    #: Loopback by default: this signature is static and replayable.
    host: str = "127.0.0.1"
    port: int = Field(6667, ge=0, le=65535)
    #: Shared secret of the HMAC-MD5 module-name signature.
    secret: SecretStr | None = None
    #: Longest accepted request line, in bytes (h11 uses 16 KiB for a whole head).
    max_line_bytes: int = Field(4096, ge=16)
    #: Most `key:value` lines in one request.
    max_lines: int = Field(64, ge=3)
    #: Seconds from connect until the request must be complete.
    read_timeout_s: float = Field(10.0, gt=0)


class TaskTypeConfig(_Section):
    """A kind of background task the daemon may run."""

    #: argv template: "{name}" stands for a parameter, "{python}" for the daemon's interpreter.
    argv: list[str] = Field(min_length=1)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    #: Working directory (relative to the config file); the config's directory if unset.
    cwd: Path | None = None
    #: The whole environment of the task: empty unless declared here.
    env: dict[str, str] = Field(default_factory=dict)
    #: Seconds between SIGTERM and SIGKILL on stop; the [tasks] default if unset.
    stop_grace_s: float | None = Field(None, ge=0)
    doc: str = ""


class TasksConfig(_Section):
    """Background tasks."""

    #: Seconds between SIGTERM and SIGKILL when a task is stopped.
    stop_grace_s: float = Field(5.0, ge=0)
    #: What a daemon shutdown does to running tasks.
    on_shutdown: Literal["stop", "leave"] = "stop"
    #: Most task records kept in memory; the oldest ended ones go first.
    max_records: int = Field(10_000, ge=1)
    types: dict[str, TaskTypeConfig] = Field(default_factory=dict)


class ModulesConfig(_Section):
    """Which modules the daemon serves."""

    #: Entry-point names (group `pymgr.modules`), "package.file:Class" or
    #: "package.file" (its @register-ed classes).
    enabled: list[str] = Field(default_factory=lambda: ["tasks"])
    #: Per-module settings, by module name.
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Config(_Section):
    """The whole configuration file."""

    #: Where the daemon keeps its state: task logs, records.
    state_dir: Path = Path("/var/lib/pymgr")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    http: HttpConfig = Field(default_factory=HttpConfig)
    legacy: LegacyConfig = Field(default_factory=LegacyConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    modules: ModulesConfig = Field(default_factory=ModulesConfig)

    def resolve_paths(self, base: Path) -> Config:
        """A copy with every relative path made absolute against ``base``."""

        def absolute(p: Path | None) -> Path | None:
            return None if p is None else (p if p.is_absolute() else (base / p).resolve())

        http = self.http.model_copy(update={"unix_socket": absolute(self.http.unix_socket)})
        types = {
            name: t.model_copy(update={"cwd": absolute(t.cwd) if t.cwd else base})
            for name, t in self.tasks.types.items()
        }
        return self.model_copy(
            update={
                "state_dir": absolute(self.state_dir),
                "http": http,
                "tasks": self.tasks.model_copy(update={"types": types}),
            }
        )


class ConfigError(Exception):
    """The config file cannot be read or does not validate."""


def load_config(path: Path) -> Config:
    """Read, validate and resolve a TOML config file.

    Raises:
        ConfigError: naming the file and every bad key.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    if raw.get("http", {}).get("unix_socket") == "":
        raw["http"]["unix_socket"] = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        lines = [f"config {path} is invalid:"]
        for err in exc.errors(include_url=False):
            lines.append(f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
    return config.resolve_paths(path.resolve().parent)
