"""The config of commands declared in TOML (``[commands.NAME]``): data only.

``modules/commands.py`` turns each into an action; this file holds only the
pydantic model, so ``pymgr.config`` can include it without importing the
runner (``modules/_cmdrun.py``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pymgr.core.loader import reserved_module_names
from pymgr.core.paramspec import ParamSpec

__all__ = ["COMMAND_NAME", "CommandConfig"]

#: A command's name is its action's name, part of a URL path: keep it plain.
COMMAND_NAME = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"

#: Default bound on each of stdout and stderr kept for the reply: enough for
#: a status report, small enough that a chatty command cannot bloat the daemon.
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024

#: Default runs of one command at once: a command offered as an action is short, and each run is
#: a root process; 150 parallel calls once meant 121 root processes.
DEFAULT_MAX_CONCURRENT = 4
#: Default calls waiting for a run: a burst is smoothed, a flood is refused (429) rather than queued forever.
DEFAULT_MAX_QUEUED = 16


class CommandConfig(BaseModel):
    """One command an operator offers as an action, with no Python."""

    model_config = ConfigDict(extra="forbid")

    #: The module the action belongs to (``commands.NAME`` by default).
    module: str = Field("commands", pattern=COMMAND_NAME)
    #: argv template: argv[0] is the executable's absolute path; "{name}"
    #: stands for a parameter and is always exactly one argv element.
    argv: list[str] = Field(min_length=1)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    #: Seconds before the command's process group gets SIGTERM (then SIGKILL).
    timeout_s: float = Field(30.0, gt=0, le=86400)
    #: Bytes of stdout and of stderr kept each; the rest is counted, not kept.
    max_output_bytes: int = Field(DEFAULT_MAX_OUTPUT_BYTES, ge=0, le=16 * 1024 * 1024)
    #: Run as this user (its primary group and supplementary groups); the daemon's own if unset.
    user: str | None = None
    #: Working directory (relative to the config file); "/" if unset.
    cwd: Path | None = None
    #: The whole environment of the command: empty unless declared here.
    env: dict[str, str] = Field(default_factory=dict)
    #: Most runs of this command at once; more calls wait (see max_queued).
    max_concurrent: int = Field(DEFAULT_MAX_CONCURRENT, ge=1, le=1024)
    #: Most calls waiting for a free run; more are refused at once with 429.
    max_queued: int = Field(DEFAULT_MAX_QUEUED, ge=0, le=65536)
    #: Stop the command (SIGTERM, grace, SIGKILL) when its caller disconnects (HTTP on the Unix socket
    #: sees it at once; TCP once a write fails); false: it runs to its end or its timeout.
    cancel_on_disconnect: bool = False
    #: The command changes nothing: read-only roles (``*:read``) may call it.
    read_only: bool = False
    #: Hard to undo: the action listing marks it, and the console asks before it calls (``@action``).
    dangerous: bool = False
    doc: str = ""

    @field_validator("module")
    @classmethod
    def _not_a_module_from_code(cls, module: str) -> str:
        # A module from code owns its name, enabled or not: a command that took "tasks" passed for a
        # task operation with the policy, and one in any such module would sit among actions it is not.
        reserved = reserved_module_names()
        if module in reserved:
            raise ValueError(
                f"module {module!r} is the name of a module from code ({', '.join(sorted(reserved))}); "
                "a command needs a module name of its own"
            )
        return module

    @field_validator("argv")
    @classmethod
    def _absolute_executable(cls, argv: list[str]) -> list[str]:
        if not argv[0].startswith("/") or "{" in argv[0]:
            raise ValueError(
                f"argv[0] must be the executable's absolute path, without placeholders, not {argv[0]!r}"
            )
        return argv
