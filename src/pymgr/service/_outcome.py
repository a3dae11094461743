"""What a service command did: an exit code and one message for a person; the LSB exit codes."""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one ``pymgr daemon`` or ``pymgr service`` command."""

    code: int
    message: str


class Lsb(enum.IntEnum):
    """Exit codes of init-script actions other than ``status`` (LSB Core)."""

    SUCCESS = 0
    GENERIC = 1
    INVALID_ARGS = 2
    UNIMPLEMENTED = 3
    NO_PRIVILEGE = 4
    NOT_INSTALLED = 5
    NOT_CONFIGURED = 6
    NOT_RUNNING = 7


class LsbStatus(enum.IntEnum):
    """Exit codes of the ``status`` action (LSB Core)."""

    RUNNING = 0
    DEAD_PIDFILE = 1
    DEAD_LOCKFILE = 2
    NOT_RUNNING = 3
    UNKNOWN = 4
