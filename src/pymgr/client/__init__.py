"""Clients of the daemon's HTTP/JSON API: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Rules:
- Every API method is written once, in ``api.Api``, as a pure description
  of its request (``api.Request``); every reply is decoded once, by
  ``replies.decode``. The two clients (``blocking``, ``asynchronous``) add
  only the I/O call between them (``_send``).
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
from pymgr.client.replies import BadReply, ConnectionFailed
from pymgr.client.target import DEV_SOCKET, SOCKET_ENV, SYSTEM_SOCKET, default_socket

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DEV_SOCKET",
    "SOCKET_ENV",
    "SYSTEM_SOCKET",
    "AsyncClient",
    "BadReply",
    "Client",
    "ConnectionFailed",
    "default_socket",
]
