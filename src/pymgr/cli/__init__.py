"""The ``pymgr`` command: run the daemon, and talk to it as an operator or a script.

Rules:
- Every command that talks to the daemon runs inside ``_session``, which
  maps errors to exit codes in one place: 1 the daemon replied with an
  error, 2 a usage error (ours, or typer's own), 69 (EX_UNAVAILABLE) the
  daemon cannot be reached.
- ``--json`` prints exactly the JSON of the result on stdout (and the error
  object on stderr), nothing else; without it, output is for people.
- Text from the daemon is data, never markup: it reaches the terminal as
  ``rich.text.Text`` with control and bidi characters escaped.
- ``name=value`` arguments are typed by the JSON Schema the daemon publishes
  for the action or task type; ``name:=JSON`` passes a raw JSON value.
- typer and rich are imported here and nowhere else.
- ``pymgr serve`` imports none of them: ``main`` runs a plain ``serve``
  command line through ``pymgr.cli.serve`` first, and ``app`` is imported
  on first use (PEP 562 ``__getattr__``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pymgr.cli.serve import lean_serve

if TYPE_CHECKING:
    from pymgr.cli.app import app

__all__ = ["app", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run the command line and return its exit code."""
    code = lean_serve(sys.argv[1:] if argv is None else argv)
    if code is not None:
        return code
    from pymgr.cli.app import main as typer_main

    return typer_main(argv)


def __getattr__(name: str) -> Any:
    if name != "app":
        raise AttributeError(f"module 'pymgr.cli' has no attribute {name!r}")
    from pymgr.cli.app import app

    return app
