"""``HmacAuth``: an httpx auth that signs every request the way the daemon checks it.

Used by ``pymgr.client.Client(url=..., key_id=..., secret=...)``; any httpx
client can use it too: ``httpx.Client(auth=HmacAuth("ci", secret))``. The
scheme itself is in ``auth/signing.py`` and docs/security.md.

Each request gets a fresh nonce (18 random bytes, base64url: 24 characters)
and the current Unix time; httpx reads the whole body first
(``requires_request_body``), since its hash is signed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Generator

import httpx

from pymgr.auth.signing import signed_headers

__all__ = ["HmacAuth"]


def _new_nonce() -> str:
    return secrets.token_urlsafe(18)


class HmacAuth(httpx.Auth):
    """Signs requests with one key.

    Args:
        key_id: the id the daemon knows the key by (``[[auth.keys]] id``).
        secret: the shared secret (str is encoded as UTF-8).
        clock: Unix seconds (tests pass a fixed one).
        nonce: a new nonce per call (tests pass a fixed one).
    """

    requires_request_body = True

    def __init__(
        self,
        key_id: str,
        secret: str | bytes,
        *,
        clock: Callable[[], float] = time.time,
        nonce: Callable[[], str] = _new_nonce,
    ) -> None:
        if not key_id:
            raise ValueError("key_id must be a non-empty key id, as in the daemon's [[auth.keys]]")
        self.key_id = key_id
        self._secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        if not self._secret:
            raise ValueError(f"secret for key {key_id!r} is empty")
        self._clock = clock
        self._nonce = nonce

    def __repr__(self) -> str:
        return f"HmacAuth(key_id={self.key_id!r})"  # never the secret

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raw_path = request.url.raw_path.split(b"?", 1)[0].decode("ascii")
        headers = signed_headers(
            self.key_id,
            self._secret,
            request.method,
            raw_path,
            request.url.query,
            request.content,
            timestamp=int(self._clock()),
            nonce=self._nonce(),
        )
        request.headers.update(headers)
        yield request
