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
"""

from pymgr.cli.app import app, main

__all__ = ["app", "main"]
