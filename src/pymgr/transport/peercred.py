"""uvicorn's httptools protocol, plus the caller's identity in every scope.

The identity is taken once per connection (in ``connection_made``) and put
into each request's ``scope["extensions"]["pymgr.identity"]``: reading
``SO_PEERCRED`` per request would cost a syscall for nothing, since the peer
of a connection cannot change.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pymgr.auth.peercred import identity_from_peercred
from pymgr.core.identity import Identity

IDENTITY_KEY = "pymgr.identity"


class PeerCredHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that records who is on the other end."""

    _identity: Identity | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._identity = identity_from_peercred(transport.get_extra_info("socket"))
        if self._identity is None:
            peer = transport.get_extra_info("peername")
            where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None
            self._identity = Identity(transport="tcp", peer=where)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {IDENTITY_KEY: self._identity}  # type: ignore[typeddict-unknown-key]
