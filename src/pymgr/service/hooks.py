"""What the daemon tells a service manager, and what a service manager hands the daemon.

Rules:
- ``pymgr.daemon.run`` calls ``ready(runtime)`` exactly once, after every
  listener is bound and serving, and ``stopping()`` exactly once, when
  shutdown begins (only if ``ready`` was called). Both run on the event loop
  and must not block it.
- ``inherited`` maps a listener name (``activation.NAMES``) to sockets a
  service manager bound for the daemon (systemd socket activation). The
  daemon serves those instead of binding its own, and never removes their
  files: they belong to the service manager.
- A hook that raises is a bug in the hook; the daemon logs it and goes on
  (a failed notification must not take the API down).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the daemon imports this module
    from pymgr.config import Config
    from pymgr.core.dispatch import CallHandler
    from pymgr.tasks.manager import TaskManager


@dataclass
class Runtime:
    """The running daemon's parts a service layer may act on (reload, status)."""

    #: The config in force; ``reload`` replaces it with the one it applied.
    config: Config
    tasks: TaskManager
    dispatcher: CallHandler
    #: What the ready line logs: listener addresses by kind, module names.
    listeners: dict[str, Any] = field(default_factory=dict)


class ServiceHooks:
    """No-op hooks: what ``pymgr.daemon.run`` uses when nobody supervises it."""

    #: Sockets handed over by a service manager, by listener name.
    inherited: Mapping[str, list[socket.socket]] = MappingProxyType({})

    def ready(self, runtime: Runtime) -> None:
        """Every listener is bound and serving."""

    def stopping(self) -> None:
        """Shutdown has begun: no new connections from now on."""


#: The hooks of an unsupervised daemon.
NO_HOOKS = ServiceHooks()
