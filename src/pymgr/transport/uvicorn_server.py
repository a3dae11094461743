"""Running uvicorn inside the daemon's own event loop, on sockets bound beforehand.

uvicorn's ``Server.serve`` installs its own signal handlers and owns the
loop's lifetime; the daemon owns both here, so only the public
``startup(sockets)`` and ``shutdown(sockets)`` steps are used: start-up binds
nothing (sockets come from ``listeners``), shutdown stops accepting, lets
in-flight requests finish within ``shutdown_timeout_s``, then cancels them.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import uvicorn

from pymgr.transport.peercred import PeerCredHttpToolsProtocol


class UvicornServer:
    """One uvicorn server over already-bound listening sockets."""

    def __init__(
        self,
        app: Any,
        sockets: list[socket.socket],
        *,
        keepalive_timeout_s: float,
        shutdown_timeout_s: float,
        protocol: type[PeerCredHttpToolsProtocol] = PeerCredHttpToolsProtocol,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.sockets = sockets
        tls: dict[str, Any] = {}
        if ssl_context is not None:  # uvicorn builds its own context unless given a factory
            tls["ssl_context_factory"] = lambda config, default: ssl_context
        config = uvicorn.Config(
            app,
            http=protocol,
            **tls,
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=int(max(1, keepalive_timeout_s)),
            timeout_graceful_shutdown=int(shutdown_timeout_s),
        )
        config.load()
        self._server = uvicorn.Server(config)
        # Server._serve sets this up before startup(); with lifespan="off" it is a no-op object.
        self._server.lifespan = config.lifespan_class(config)

    async def start(self) -> None:
        await self._server.startup(sockets=self.sockets)

    async def close(self) -> None:
        """Stop accepting, finish in-flight requests (bounded), close connections."""
        await self._server.shutdown(sockets=self.sockets)
