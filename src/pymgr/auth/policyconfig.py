"""The ``[policy]`` section as config: its rules, each checked as the config loads.

A rule's subjects and action patterns are parsed here (``_policysyntax.py``),
so a malformed one is a config error naming its field; whether a subject
names a configured key, and what each rule allows, is the compiled
policy's business (``policy.py``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pymgr.auth._policysyntax import parse_pattern, parse_subject

__all__ = ["PolicyConfig", "PolicyRule"]


def _check_subject(text: str) -> str:
    parse_subject(text)
    return text


def _check_pattern(text: str) -> str:
    parse_pattern(text)
    return text


class PolicyRule(BaseModel):
    """One ``[[policy.rules]]`` entry."""

    model_config = ConfigDict(extra="forbid")

    #: Shown in errors, start-up notes and 403 details.
    name: str | None = None
    #: Who the rule is for: any of these.
    subjects: list[Annotated[str, AfterValidator(_check_subject)]] = Field(min_length=1)
    #: What they may do: any of these patterns.
    actions: list[Annotated[str, AfterValidator(_check_pattern)]] = Field(min_length=1)
    #: Also lift an action's own ``@action(allow=...)`` requirement (logged at start).
    override: bool = False


class PolicyConfig(BaseModel):
    """The ``[policy]`` section."""

    model_config = ConfigDict(extra="forbid")

    rules: list[PolicyRule] = Field(default_factory=list)
