"""The ``[service]`` table: how pymgr runs as a system service (systemd, ``pymgr daemon``, Windows)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from pymgr.config.section import Section


class ServiceConfig(Section):
    """How pymgr runs as a system service: systemd units, `pymgr daemon`, Windows (docs/install.md)."""

    #: Sandboxing of the generated systemd unit: "strict", "relaxed" or "off" (docs/install.md lists each
    #: option).
    hardening: Literal["strict", "relaxed", "off"] = "strict"
    #: [Service] directives that replace the hardening level's value, e.g. {ProtectSystem = "full"}; "" drops
    #: one.
    overrides: dict[
        Annotated[str, Field(pattern=r"^[A-Z][A-Za-z]+$")], Annotated[str, Field(pattern=r"^[^\n\r]*$")]
    ] = Field(default_factory=dict)
    #: Extra paths the daemon and its tasks may write under ProtectSystem=strict (state_dir is always
    #: writable).
    read_write_paths: list[Path] = Field(default_factory=list)
    #: systemd WatchdogSec: the event loop must answer within this many seconds or systemd restarts
    #: the daemon; 0 turns the watchdog off. Below 2 s a busy host would see false alarms.
    watchdog_s: int = Field(30, ge=0, le=3600)
    #: systemd RestartSec: seconds between a failure and the restart.
    restart_delay_s: int = Field(2, ge=0, le=3600)
    #: `pymgr daemon`: the pidfile, locked for the daemon's life (--pidfile overrides).
    pidfile: Path = Path("/run/pymgr/pymgr.pid")
    #: `pymgr daemon` and the Windows service: the log file; <state_dir>/pymgr.log if unset.
    log_file: Path | None = None
    #: `pymgr daemon start`: seconds to wait for the daemon to be ready.
    start_timeout_s: float = Field(30.0, gt=0)
    #: `pymgr daemon stop`: seconds to wait after SIGTERM (in-flight requests and task stops need time).
    stop_timeout_s: float = Field(60.0, gt=0)

    @field_validator("watchdog_s")
    @classmethod
    def _watchdog_floor(cls, value: int) -> int:
        if 0 < value < 2:
            raise ValueError(f"must be 0 (off) or at least 2 seconds, not {value}")
        return value
