"""The base of every table of the config file: unknown keys are errors, not ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A table of the config file; a misspelt key is refused, naming it."""

    model_config = ConfigDict(extra="forbid")
