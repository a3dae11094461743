"""What the console believes of a reverse proxy: ``X-Forwarded-For`` / ``-Proto``, and the header in
which a sign-in proxy (oauth2-proxy, nginx ``auth_request``, Authelia) names the person.

Rules:
- Both are believed only when the TCP peer, the address that connected, is in ``trusted_proxies``;
  or, with ``listen = "unix:PATH"`` and "unix" in ``trusted_proxies``, for every connection to that
  socket: it has no address, and the file's mode and group (``listener.py``) decide who connects.
  Such a peer is named "unix" (in the logs, and as the request's client without X-Forwarded-For).
  The peer is read here, before ``X-Forwarded-For`` replaces it (uvicorn's ``ProxyHeadersMiddleware``,
  run inside this middleware, never by uvicorn itself: ``run.py``), so that a forwarded address can
  never pass for a trusted proxy.
- With ``proxy_user_header`` unset the header means nothing and is ignored. Set, a request carrying
  it from any other peer is refused (403) and logged, whatever its cookie: a person who can reach the
  console past the proxy must not be able to name themselves.
- From a trusted proxy, one header with a name of the users file's shape (``users.NAME``) signs the
  person in: a session of their own (``via_proxy``: a CSRF token, the timeouts), the same session
  while the proxy keeps naming the same person, with or without its cookie (``Sessions.proxied``).
  Twice the header, or an odd name, is 400 and logged. Without the header the request is an
  ordinary one: a cookie of a password login, or the login form.
- Roles: ``proxy_roles_header`` (comma-separated; twice is 400 and logged, never merged) filtered
  to ``proxy_roles``; without it, the users file's entry of that name, else ``proxy_default_roles``.
  Read at every request: the proxy decides.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from pymgr.console import users
from pymgr.console.config import UNIX
from pymgr.console.sessions import Session
from pymgr.console.state import PROXY_SESSION, cookie_token, set_session_cookie

if TYPE_CHECKING:
    from pymgr.console.state import Console

log = logging.getLogger("pymgr.console")

#: Where a request's scope keeps the TCP peer's address, and whether it is a trusted proxy.
PEER = "pymgr.peer"
TRUSTED_PEER = "pymgr.trusted_peer"
#: A name longer than this is not logged whole.
_LOGGED_CHARS = 80


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ProxyTrust:
    """ASGI middleware: the forwarded headers and the user header, from trusted proxies only."""

    def __init__(self, app: ASGIApp, console: Console) -> None:
        self.app = app
        self.console = console
        config = console.config
        self.networks = [ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies if p != UNIX]
        # Connections with no address are the Unix socket's only when the console listens on one:
        # on TCP, uvicorn gives none to a peer that went away before it asked (never trusted).
        self.unix_peer = UNIX if config.listen_path() is not None else ""
        self.unix_trusted = UNIX in config.trusted_proxies
        self.user_header = (config.proxy_user_header or "").lower().encode()
        self.roles_header = (config.proxy_roles_header or "").lower().encode()
        self.forwarded: ASGIApp = self._sign_in
        if config.trusted_proxies:
            # uvicorn types ASGI apps with its own TypedDicts, Starlette with plain mappings: one shape.
            inner: Any = self._sign_in
            forwarded: Any = ProxyHeadersMiddleware(inner, trusted_hosts=config.trusted_proxies)
            self.forwarded = forwarded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("client"):
            peer = scope["client"][0]
        else:
            peer = self.unix_peer
            if peer:
                scope["client"] = (peer, 0)  # believed as "unix" by uvicorn's middleware too
        scope[PEER], scope[TRUSTED_PEER] = peer, self._trusted(peer)
        await self.forwarded(scope, receive, send)

    def _trusted(self, peer: str) -> bool:
        if peer == UNIX:
            return self.unix_trusted
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False  # a Unix socket's peer, or none
        return any(address in network for network in self.networks)

    async def _sign_in(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.user_header:
            await self.app(scope, receive, send)
            return
        names = [v for n, v in scope["headers"] if n == self.user_header]
        if not names:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            token, session, created = self._session(request, names)
        except _Refused as exc:
            reply = self.console.render(request, "error.html", exc.status, message=str(exc))
            await reply(scope, receive, send)
            return
        scope[PROXY_SESSION] = (token, session)
        if not created:
            await self.app(scope, receive, send)
            return
        holder = Response()
        set_session_cookie(request, holder, token)
        cookies = [(n, v) for n, v in holder.raw_headers if n == b"set-cookie"]

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *cookies]
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _session(self, request: Request, names: list[bytes]) -> tuple[str, Session, bool]:
        """The session the header stands for, and whether its cookie is to be set (the request's
        cookie names another session, or none).

        Raises:
            _Refused: a peer that is no trusted proxy, or a header that names no one clearly.
        """
        peer = request.scope[PEER]
        header = self.console.config.proxy_user_header
        if not request.scope[TRUSTED_PEER]:
            log.warning("refused a request with %s from %s, which is not in trusted_proxies", header, peer)
            raise _Refused(403, f"{header} is believed from the sign-in proxy only; sign in through it.")
        if len(names) > 1:
            log.warning(
                "refused a request from the proxy %s with %s given %d times", peer, header, len(names)
            )
            raise _Refused(400, f"The sign-in proxy sent {header} {len(names)} times; it must send it once.")
        name = names[0].decode("latin-1").strip()
        if not users.NAME.fullmatch(name):
            log.warning("refused the name %r in %s from the proxy %s", name[:_LOGGED_CHARS], header, peer)
            raise _Refused(
                400,
                f"The sign-in proxy named a person the console does not accept ({header}): a name is 1 to 64 "
                "ASCII letters, digits and . _ @ -, starting with a letter or digit.",
            )
        token, session, new = self.console.sessions.proxied(name, self._roles(request, name))
        if new:
            log.info("sign-in of %s by the proxy %s", name, peer)
        return token, session, token != cookie_token(request)

    def _roles(self, request: Request, name: str) -> tuple[str, ...]:
        """The person's roles (module docstring).

        Raises:
            _Refused: the roles header sent more than once.
        """
        config = self.console.config
        if not self.roles_header:
            entry = self.console.users().get(name)
            return entry.roles if entry is not None else tuple(config.proxy_default_roles)
        sent = [v for n, v in request.scope["headers"] if n == self.roles_header]
        if len(sent) > 1:
            # Merged, a second header (a browser's, passed along by a proxy that appends) adds roles.
            header, peer = config.proxy_roles_header, request.scope[PEER]
            log.warning("refused a request from the proxy %s with %s given %d times", peer, header, len(sent))
            raise _Refused(400, f"The sign-in proxy sent {header} {len(sent)} times; it must send it once.")
        given = {part.strip() for part in (sent[0] if sent else b"").decode("latin-1").split(",")}
        return tuple(role for role in config.proxy_roles if role in given)
