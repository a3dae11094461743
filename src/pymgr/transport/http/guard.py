"""In front of the HTTP app: who is calling (TCP signatures), and how often.

Rules:
- On the Unix socket the caller is the peer-credentials identity the
  connection took, its names refreshed by ``peercred.current`` once they
  are older than ``[auth] groups_max_age_s`` or a SIGHUP dropped them. On TCP, every request must be signed
  (``auth/signing.py``) unless the TLS handshake verified a client
  certificate; a signed request over TLS carries both names. The body
  (already read whole, bounded by ``max_body_bytes``) is hashed for the
  signature and handed to the app unchanged.
- An unsigned, badly signed, stale or replayed request gets 401 with
  ``WWW-Authenticate: PYMGR-HMAC-SHA256`` and an audit line, and is charged
  to the client address's rate.
- Every request then takes a token from its caller's rate
  (``EdgeGuard.admit``); none left is 429 with ``Retry-After``. A signed
  request's nonce is stored only after that (``Verifier.remember``): a key
  over its rate fills no nonce room, and a key over its own nonce quota
  gets 503 while every other key's requests go on.
- Then a delegate's request becomes its person's (``auth/delegation.py``,
  the delegates of the policy in force now); the rate stays the delegate's.
  A refused delegation is counted among the audit's refusals.
- Replies are the app's JSON envelope; this file never dispatches.
"""

from __future__ import annotations

from collections.abc import Callable

from pymgr.auth.delegation import HEADERS as DELEGATION_HEADERS
from pymgr.auth.delegation import NO_DELEGATES, Delegation
from pymgr.auth.guard import EdgeGuard
from pymgr.auth.peercred import current
from pymgr.auth.signing import SCHEME, SignedRequest, Verifier, parse_headers
from pymgr.core.identity import Identity
from pymgr.errors import PymgrError, Unauthenticated
from pymgr.transport.http.messages import Handler, Reply, Request, Stream, error_reply

__all__ = ["GuardedApp"]

_SIGNING_PREFIX = b"x-pymgr-"
_CHALLENGE = (b"www-authenticate", SCHEME.encode())


class GuardedApp:
    """Authenticates TCP requests and applies the per-identity rate, then calls the app.

    Args:
        app: the HTTP app.
        edge: the rate limit and the audit of refusals.
        verifier: checks signatures; None means no keys are configured (only
            certificate callers get through on TCP).
        delegation: the delegates of the policy in force (read per request: a SIGHUP swaps them); None,
            or a function returning None, refuses every ``X-Pymgr-On-Behalf-Of``.
    """

    def __init__(
        self,
        app: Handler,
        *,
        edge: EdgeGuard,
        verifier: Verifier | None,
        delegation: Callable[[], Delegation | None] | None = None,
    ) -> None:
        self.app = app
        self.edge = edge
        self.verifier = verifier
        self.delegation = delegation or (lambda: None)

    async def __call__(self, request: Request) -> Reply | Stream:
        try:
            if request.identity.transport != "unix":
                request.identity, signed = self._authenticate(request)
                self.edge.admit(request.identity, "http", request.method, request.path)
                if signed is not None:
                    self._remember(request, signed)
            else:
                # The connection's caller, with its group names re-read once they passed their age (or a SIGHUP).
                request.identity = current(request.identity)
                self.edge.admit(request.identity, "http", request.method, request.path)
            request.identity = self._delegated(request)
        except Unauthenticated as exc:
            return error_reply(exc, _CHALLENGE)
        except PymgrError as exc:
            return error_reply(exc)
        return await self.app(request)

    def _authenticate(self, request: Request) -> tuple[Identity, SignedRequest | None]:
        """The caller, and its signed headers whose nonce is still to be stored (None: a certificate caller)."""
        identity = request.identity
        try:
            headers = _signing_headers(request.headers)
            if not headers and identity.cert is not None:
                return identity, None  # a verified client certificate is enough
            if self.verifier is None:
                raise Unauthenticated(
                    "this TCP listener accepts only verified client certificates; none was sent"
                )
            signed = self.verifier.check(
                request.method,
                request.raw_path.decode("latin-1"),
                request.query,
                request.body,
                parse_headers(headers),
            )
        except Unauthenticated as exc:
            what = f"http {request.method} {request.path}"
            self.edge.admit(identity, what)  # failures count against the client address: RateLimited
            self.edge.refused(identity, what, exc)
            raise
        return self._signed_identity(identity, signed.key_id), signed

    def _delegated(self, request: Request) -> Identity:
        """The person a delegate acts for, or the caller itself; a refusal is counted and raised."""
        delegation = self.delegation()
        try:
            if delegation is None:
                return NO_DELEGATES.resolve(request.identity, request.headers)
            return delegation.resolve(request.identity, request.headers)
        except PymgrError as exc:
            self.edge.refused(request.identity, f"delegation http {request.method} {request.path}", exc)
            raise

    def _remember(self, request: Request, signed: SignedRequest) -> None:
        """Store the nonce of a request its rate let through; a full quota is refused and audited."""
        try:
            self.verifier.remember(signed)  # type: ignore[union-attr]  # signed comes from the verifier
        except PymgrError as exc:
            self.edge.refused(request.identity, f"http {request.method} {request.path}", exc)
            raise

    def _signed_identity(self, identity: Identity, key_id: str) -> Identity:
        """The caller with its key id."""
        return Identity(transport=identity.transport, peer=identity.peer, cert=identity.cert, key_id=key_id)


def _signing_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The ``x-pymgr-*`` headers but the delegation's: a certificate caller that sends only those is a
    certificate caller still (refused 403 by the delegation, not 401 for a signature it need not send).

    Raises:
        Unauthenticated: a signing header appears twice.
    """
    headers: dict[str, str] = {}
    for name, value in raw:
        if name[:8] == _SIGNING_PREFIX and name not in DELEGATION_HEADERS:
            text = name.decode("latin-1")
            if text in headers:
                raise Unauthenticated(f"header {text} appears more than once; send each signing header once")
            headers[text] = value.decode("latin-1")
    return headers
