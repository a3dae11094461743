"""Is the daemon installed? The ``daemon`` extra's modules, and the one-line error when one is missing.

``pip install pymgr`` is the light client: ``pymgr.client`` and the CLI's
client commands (docs/install.md, "Install the package"). The daemon's own
dependencies come with ``pip install 'pymgr[daemon]'``. The daemon commands
(``serve``, ``daemon ...``, ``service ...``) check for them before they
import anything of the daemon, so a light install says what to install
rather than failing deep in an import with a traceback.

Rules:
- ``DAEMON_MODULES`` names, per distribution of the ``daemon`` extra in
  pyproject.toml, the module it provides; a test keeps the two lists equal.
- The check finds modules (``importlib.util.find_spec``), it imports none:
  ``pymgr serve`` stays free of the CLI stack (cli/serve.py).
- This module imports the standard library only.
"""

from __future__ import annotations

import importlib.util
import sys

#: The ``daemon`` extra's distributions (pyproject.toml), the module each provides, and
#: where it is required, as the extra's markers say: "any", "unix" (not win32) or "win32".
DAEMON_MODULES: dict[str, tuple[str, str]] = {
    "pydantic": ("pydantic", "any"),
    "httptools": ("httptools", "any"),
    "uvloop": ("uvloop", "unix"),
    "psutil": ("psutil", "any"),
    "python-daemon": ("daemon", "unix"),
    "prometheus-client": ("prometheus_client", "any"),
    "pywin32": ("win32service", "win32"),
}

#: What a light install is told to run.
INSTALL_HINT = "pip install 'pymgr[daemon]'"

#: The ``fleet`` extra's distributions and the module each provides: a daemon with a ``[fleet]``
#: section and the ``pymgr fleet`` commands need them; nothing else imports them.
FLEET_MODULES: dict[str, str] = {"redis": "redis", "cryptography": "cryptography"}

#: What an install without the fleet extra is told to run.
FLEET_INSTALL_HINT = "pip install 'pymgr[fleet]'"


def _required_here(where: str) -> bool:
    return where == "any" or (where == "win32") == (sys.platform == "win32")


def missing_daemon_module() -> str | None:
    """The first daemon dependency this Python cannot import, or ``None`` when all are there."""
    for module, where in DAEMON_MODULES.values():
        if _required_here(where) and importlib.util.find_spec(module) is None:
            return module
    return None


def no_fleet_message(command: str) -> str | None:
    """The one-line error for ``command`` when the fleet extra is missing; ``None`` if it can run."""
    for module in FLEET_MODULES.values():
        if importlib.util.find_spec(module) is None:
            return (
                f"error: {command} needs the fleet's dependencies ({module} is missing): {FLEET_INSTALL_HINT}"
            )
    return None


def no_daemon_message(command: str) -> str | None:
    """The one-line error for ``command`` (``pymgr serve``) on a light install; ``None`` if it can run."""
    missing = missing_daemon_module()
    if missing is None:
        return None
    return f"error: {command} needs the daemon's dependencies ({missing} is missing): {INSTALL_HINT}"
