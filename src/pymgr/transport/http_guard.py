"""ASGI middleware in front of the HTTP app: who is calling (TCP signatures), and how often.

Rules:
- On the Unix socket the caller is the peer-credentials identity the
  protocol put in the scope. On TCP, every request must be signed
  (``auth/signing.py``) unless the TLS handshake verified a client
  certificate; a signed request over TLS carries both names. The body is
  read (bounded by ``max_body_bytes``) to check its hash, then handed to the
  app unchanged.
- An unsigned, badly signed, stale or replayed request gets 401 with
  ``WWW-Authenticate: PYMGR-HMAC-SHA256`` and an audit line, and is charged
  to the client address's rate.
- Every request then takes a token from its caller's rate
  (``EdgeGuard.admit``); none left is 429 with ``Retry-After``.
- A declared ``Content-Length`` over ``max_body_bytes`` is 413 before
  anything reads the body; the protocol then half-closes the connection
  and drops the rest (no ``connection: close`` header: with it, uvicorn
  would close at once, and closing with unread input resets the
  connection, which can destroy the reply before the client reads it).
- Replies are the app's JSON envelope; this file never dispatches.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from pymgr.auth.guard import EdgeGuard
from pymgr.auth.signing import SCHEME, Verifier, parse_headers
from pymgr.core.identity import Identity
from pymgr.errors import PymgrError, RateLimited, Unauthenticated
from pymgr.transport.http_body import check_content_length, read_body
from pymgr.transport.peercred import IDENTITY_KEY

__all__ = ["SecurityMiddleware"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_SIGNING_PREFIX = b"x-pymgr-"
#: Signed identities kept for reuse (by client address and key): bounded, cleared when full.
_IDENTITY_CACHE_MAX = 4096


class SecurityMiddleware:
    """Authenticates TCP requests and applies the per-identity rate.

    Args:
        app: the HTTP app.
        edge: the rate limit and the audit of refusals.
        verifier: checks signatures; None means no keys are configured (only
            certificate callers get through on TCP).
        max_body_bytes: the body bound while reading it for the signature.
    """

    def __init__(self, app: App, *, edge: EdgeGuard, verifier: Verifier | None, max_body_bytes: int) -> None:
        self.app = app
        self.edge = edge
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes
        self._identities: dict[tuple[str | None, str | None, str], Identity] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extensions = scope.get("extensions") or {}
        identity = extensions.get(IDENTITY_KEY) or Identity(transport="tcp")
        try:
            if identity.transport != "unix":
                identity, receive = await self._authenticate(scope, receive, identity)
                scope = {**scope, "extensions": {**extensions, IDENTITY_KEY: identity}}
            self.edge.admit(identity, "http", scope["method"], scope["path"])
        except PymgrError as exc:
            await _reply(send, exc)
            return
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope, receive: Receive, identity: Identity) -> tuple[Identity, Receive]:
        try:
            headers = _signing_headers(scope["headers"], self.max_body_bytes)
            if not headers and identity.cert is not None:
                return identity, receive  # a verified client certificate is enough
            if self.verifier is None:
                raise Unauthenticated("this TCP listener accepts only verified client certificates; none was sent")
            signed = parse_headers(headers)  # refuse an unsigned request before reading its body
            body = await read_body(receive, self.max_body_bytes)
            raw_path = scope.get("raw_path") or scope["path"].encode()
            key_id = self.verifier.verify(
                scope["method"], raw_path.decode("latin-1"), scope["query_string"], body, signed
            )
        except Unauthenticated as exc:
            what = f"http {scope['method']} {scope['path']}"
            self.edge.admit(identity, what)  # failures count against the client address: RateLimited
            self.edge.refused(identity, what, exc)
            raise
        return self._signed_identity(identity, key_id), _replay(body, receive)

    def _signed_identity(self, identity: Identity, key_id: str) -> Identity:
        """The caller with its key id; one object per (connection, key), so every cache downstream hits."""
        cache_key = (identity.peer, identity.cert, key_id)
        caller = self._identities.get(cache_key)
        if caller is None:
            if len(self._identities) >= _IDENTITY_CACHE_MAX:
                self._identities.clear()
            caller = Identity(transport=identity.transport, peer=identity.peer, cert=identity.cert, key_id=key_id)
            self._identities[cache_key] = caller
        return caller


def _signing_headers(raw: list[tuple[bytes, bytes]], limit: int) -> dict[str, str]:
    """The ``x-pymgr-*`` headers; and a declared body over ``limit`` is refused before anything reads it.

    Raises:
        Unauthenticated: a signing header appears twice.
        TooLarge: ``content-length`` is over ``limit``.
    """
    headers: dict[str, str] = {}
    for name, value in raw:
        if name[:8] == _SIGNING_PREFIX:
            text = name.decode("latin-1")
            if text in headers:
                raise Unauthenticated(f"header {text} appears more than once; send each signing header once")
            headers[text] = value.decode("latin-1")
        elif name == b"content-length":
            check_content_length(value, limit)
    return headers


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, then the connection's own messages (its disconnect)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reply(send: Send, error: PymgrError) -> None:
    body = json.dumps({"ok": False, "error": error.to_dict()}, separators=(",", ":"), ensure_ascii=False).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(error, Unauthenticated):
        headers.append((b"www-authenticate", SCHEME.encode()))
    if isinstance(error, RateLimited) and error.details:
        headers.append((b"retry-after", str(error.details["retry_after_s"]).encode()))
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
