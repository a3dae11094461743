"""Clients of the daemon's HTTP/JSON API: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Rules:
- Every API request is written once, in ``api``, as a pure description
  (``api.Request``) that carries the reader of its reply; every envelope is
  decoded once, by ``replies.decode``, and every result read once into the
  frozen dataclasses of ``results`` (``TaskRecord``, ``Event``, ...), never
  ``Any``. The two clients (``blocking``, ``asynchronous``) add only the I/O
  (``_send``) and one typed line per method.
- Retries are opt-in (``retry=Retry(...)``, ``retry.py``); ``wait`` watches one
  run to its end without a race (``waiting.py``).
- A reply ``{"ok": false, "error": {...}}`` raises the class that
  ``pymgr.errors.error_class_for`` gives its code, carrying the reply's
  ``code``, ``message``, ``details`` and the HTTP status (``http_status``).
- A daemon that cannot be reached (or stops answering) raises
  ``ConnectionFailed``, naming the socket or URL and what to check; a reply
  that is not pymgr's JSON envelope raises ``BadReply``.
- No proxy and no ``.netrc`` credentials, ever (``trust_env=False``): this
  client talks to one privileged daemon, not to the web.

Import the names below from ``pymgr.client``; the modules of this package
are its layout, not its API.
"""

from pymgr.client.api import DEFAULT_TIMEOUT_S
from pymgr.client.asynchronous import AsyncClient
from pymgr.client.blocking import Client
from pymgr.client.fields import BadReply, JsonObject, JsonValue
from pymgr.client.replies import ConnectionFailed
from pymgr.client.results import (
    FINAL_STATES,
    ActionInfo,
    CancelSource,
    Event,
    Health,
    ModuleInfo,
    Progress,
    TaskCounts,
    TaskRecord,
    TaskState,
    TaskTypeInfo,
)
from pymgr.client.retry import Retry
from pymgr.client.target import DEV_SOCKET, SOCKET_ENV, SYSTEM_SOCKET, default_socket
from pymgr.client.waiting import WaitTimeout

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DEV_SOCKET",
    "FINAL_STATES",
    "SOCKET_ENV",
    "SYSTEM_SOCKET",
    "ActionInfo",
    "AsyncClient",
    "BadReply",
    "CancelSource",
    "Client",
    "ConnectionFailed",
    "Event",
    "Health",
    "JsonObject",
    "JsonValue",
    "ModuleInfo",
    "Progress",
    "Retry",
    "TaskCounts",
    "TaskRecord",
    "TaskState",
    "TaskTypeInfo",
    "WaitTimeout",
    "default_socket",
]
