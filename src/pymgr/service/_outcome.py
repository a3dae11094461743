"""What a service command did: an exit code and one message for a person."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one ``pymgr daemon`` or ``pymgr service`` command."""

    code: int
    message: str
