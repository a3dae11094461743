"""HMAC-SHA256 request signing for TCP callers: the scheme, exactly, and its checks.

No I/O here: canonical forms, signatures and checks are functions of their
inputs (the clock and the nonce cache are passed in), so the client, the
server and the docs' worked example all run the same code.

The scheme (docs/security.md says the same, for clients in other languages):

    X-Pymgr-Key:       the key id
    X-Pymgr-Timestamp: Unix time, whole seconds, decimal
    X-Pymgr-Nonce:     16-64 characters of [A-Za-z0-9_-], new for every request
    X-Pymgr-Signature: lower-case hex HMAC-SHA256(secret, canonical request)

    canonical request = these 8 lines joined by "\\n" (no trailing newline):
        PYMGR-HMAC-SHA256
        METHOD                   upper case
        canonical path           see canonical_path
        canonical query          see canonical_query ("" if none)
        hex SHA-256 of the body  the exact bytes sent (empty body too)
        timestamp                as in the header
        nonce                    as in the header
        key id                   as in the header

Rules of the check, in order (each failure is 401 ``unauthenticated`` and
says which): all four headers present and well-formed; the key id is
configured; ``|now - timestamp| <= clock_skew_s``; the signature matches
(constant-time compare); the (key id, nonce) pair was not seen within its
window. A nonce is remembered only after its signature checked out and the
caller's rate let the request through (``Verifier.check`` then
``Verifier.remember``: a key over its rate stores nothing), until its
timestamp leaves the window. Each key has its own quota of live nonces
(``nonce_quota_per_key``); a key over it gets 503 rather than a forgotten
nonce (which would allow a replay), and no key's nonces can take another
key's room.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from typing import NamedTuple
from urllib.parse import quote, unquote, unquote_to_bytes

from pymgr.auth.nonces import NonceCache
from pymgr.errors import Unauthenticated

__all__ = [
    "HEADER_KEY",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "SCHEME",
    "Verifier",
    "canonical_path",
    "canonical_query",
    "canonical_request",
    "sign",
    "signed_headers",
]

SCHEME = "PYMGR-HMAC-SHA256"
HEADER_KEY = "X-Pymgr-Key"
HEADER_TIMESTAMP = "X-Pymgr-Timestamp"
HEADER_NONCE = "X-Pymgr-Nonce"
HEADER_SIGNATURE = "X-Pymgr-Signature"
_HEADERS = (HEADER_KEY, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)

#: RFC 3986 unreserved characters besides letters and digits: the only ones
#: left unencoded in canonical forms (as in AWS SigV4).
_UNRESERVED = "-_.~"
_CANONICAL_PATH = re.compile(r"^[A-Za-z0-9\-._~/]*$")
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
#: 16 characters of base64url carry 96 bits: collisions between honest
#: clients are negligible; 64 bounds what the cache stores per request.
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_SIGNATURE = re.compile(r"^[0-9a-fA-F]{64}$")
#: Canonical request heads (scheme, method, path, query) cached by (method, raw path, raw query): a
#: client calls a few routes, and the head is ~0.6 µs of the ~2 a canonical request takes. Cleared when full.
_HEAD_CACHE_MAX = 1024


def canonical_path(path: str) -> str:
    """The path as sent on the request line (percent-encoded, no query), each
    "/"-separated segment percent-decoded as UTF-8 and encoded again leaving
    only unreserved characters (upper-case hex). ``/v1/modules/a%20b/x`` and
    ``/v1/modules/a b/x`` both give ``/v1/modules/a%20b/x``; an encoded
    slash stays encoded (``a%2Fb`` is one segment, not two).

    Raises:
        ValueError: a percent-escape does not decode as UTF-8.
    """
    if _CANONICAL_PATH.match(path):  # the usual path: already canonical
        return path
    return "/".join(quote(unquote(segment, errors="strict"), safe=_UNRESERVED) for segment in path.split("/"))


def canonical_query(query: str | bytes) -> str:
    """The query string in a canonical order and encoding.

    Split on "&" (empty parts dropped); each part into name and value at its
    first "=" (no "=" means an empty value); "+" is a space; percent-decode
    each as UTF-8; percent-encode again leaving only unreserved characters
    (upper-case hex); sort by name, then value; join as ``name=value`` with "&".

    Raises:
        ValueError: the raw query is not ASCII, or a name or value is not
            UTF-8 once decoded.
    """
    if not query:
        return ""
    raw = query.decode("ascii") if isinstance(query, bytes) else query
    pairs = []
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_requote(name), _requote(value)))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _requote(text: str) -> str:
    decoded = unquote_to_bytes(text.replace("+", " ")).decode("utf-8")
    return quote(decoded, safe=_UNRESERVED)


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str, path: str, query: str | bytes, body: bytes, *, timestamp: str, nonce: str, key_id: str
) -> str:
    """The text that is signed (see the module docstring)."""
    lines = (
        SCHEME,
        method.upper(),
        canonical_path(path),
        canonical_query(query),
        body_sha256(body),
        timestamp,
        nonce,
        key_id,
    )
    return "\n".join(lines)


def sign(secret: bytes, canonical: str) -> str:
    """Lower-case hex HMAC-SHA256 of the canonical request."""
    # hmac.digest is the one-shot C path: the same bytes as hmac.new(...).digest(), at half the cost.
    return hmac.digest(secret, canonical.encode("utf-8"), "sha256").hex()


def signed_headers(
    key_id: str,
    secret: bytes,
    method: str,
    path: str,
    query: str | bytes,
    body: bytes,
    *,
    timestamp: int,
    nonce: str,
) -> dict[str, str]:
    """The four headers a client adds to a request."""
    stamp = str(timestamp)
    canonical = canonical_request(method, path, query, body, timestamp=stamp, nonce=nonce, key_id=key_id)
    return {
        HEADER_KEY: key_id,
        HEADER_TIMESTAMP: stamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: sign(secret, canonical),
    }


class SignedRequest(NamedTuple):
    """The four signing headers, checked for form (a tuple: one is made per request)."""

    key_id: str
    timestamp: str
    nonce: str
    signature: str


def parse_headers(headers: Mapping[str, str]) -> SignedRequest:
    """The signing headers of a request (names lower-case).

    Raises:
        Unauthenticated: a header is missing or malformed.
    """
    key_id = headers.get("x-pymgr-key")
    timestamp = headers.get("x-pymgr-timestamp")
    nonce = headers.get("x-pymgr-nonce")
    signature = headers.get("x-pymgr-signature")
    if key_id is None or timestamp is None or nonce is None or signature is None:
        missing = [name for name in _HEADERS if name.lower() not in headers]
        raise Unauthenticated(
            f"request is not signed: missing {', '.join(missing)}; TCP callers sign every request "
            "with HMAC-SHA256 (docs/security.md, 'Signed requests')",
            details={"missing": missing},
        )
    for name, value, form, expected in (
        (HEADER_KEY, key_id, _KEY_ID, "1-64 of [A-Za-z0-9._-]"),
        (HEADER_TIMESTAMP, timestamp, _TIMESTAMP, "Unix seconds"),
        (HEADER_NONCE, nonce, _NONCE, "16-64 of [A-Za-z0-9_-]"),
        (HEADER_SIGNATURE, signature, _SIGNATURE, "64 hex digits"),
    ):
        if not form.fullmatch(value):  # fullmatch: "$" alone would let a trailing "\n" through
            raise Unauthenticated(f"{name} must be {expected}, not {value[:80]!r}")
    return SignedRequest(key_id, timestamp, nonce, signature)


class Verifier:
    """Checks signed requests against the configured keys.

    Args:
        keys: secret by key id.
        clock_skew_s: how far a timestamp may be from ``clock()``, either way.
        nonces: the replay cache.
        clock: wall-clock seconds (``time.time``).
    """

    def __init__(
        self,
        keys: Mapping[str, bytes],
        *,
        clock_skew_s: float,
        nonces: NonceCache,
        clock: Callable[[], float],
    ) -> None:
        self.keys = dict(keys)
        # One keyed HMAC per key, copied per request: a copy skips the key setup that a new HMAC repeats
        # (2-6 µs of a signed request here, bench/bench_guard.py).
        self._macs = {
            key_id: hmac.new(secret, digestmod=hashlib.sha256) for key_id, secret in self.keys.items()
        }
        self.clock_skew_s = clock_skew_s
        self.nonces = nonces
        self._heads: dict[tuple[str, str, str | bytes], str] = {}
        self._clock = clock

    def verify(
        self,
        method: str,
        path: str,
        query: str | bytes,
        body: bytes,
        headers: Mapping[str, str] | SignedRequest,
    ) -> str:
        """The key id of a correctly signed, fresh, first-seen request; its nonce is remembered.

        ``check`` then ``remember``, for a caller with no rate to apply between them.

        Raises:
            Unauthenticated: unsigned, unknown key, outside the window, bad signature, replayed.
            Unavailable: the key's nonce quota is full.
        """
        signed = self.check(method, path, query, body, headers)
        self.remember(signed)
        return signed.key_id

    def remember(self, signed: SignedRequest) -> None:
        """Store the nonce of a request ``check`` accepted (once its rate let it through).

        Raises:
            Unauthenticated: the nonce was stored since ``check`` (a replay).
            Unavailable: the key's nonce quota is full.
        """
        key_id, timestamp, nonce, _ = signed
        if not self.nonces.add(key_id, nonce, int(timestamp) + self.clock_skew_s, self._clock()):
            raise _replayed(key_id, nonce)

    def check(
        self,
        method: str,
        path: str,
        query: str | bytes,
        body: bytes,
        headers: Mapping[str, str] | SignedRequest,
    ) -> SignedRequest:
        """The signing headers of a correctly signed, fresh, not yet seen request; nothing is stored.

        Args:
            headers: the request's headers (names in lower case), or their
                ``parse_headers`` result.

        Raises:
            Unauthenticated: unsigned, unknown key, outside the window, bad signature, replayed.
        """
        signed = headers if isinstance(headers, SignedRequest) else parse_headers(headers)
        key_id, timestamp, nonce, signature = signed
        keyed = self._macs.get(key_id)
        if keyed is None:
            raise Unauthenticated(f"unknown key id {key_id!r}", details={"key_id": key_id})
        now = self._clock()
        stamp = int(timestamp)
        if abs(stamp - now) > self.clock_skew_s:
            raise self._stale(timestamp, stamp - now, now)
        head = self._heads.get((method, path, query))
        if head is None:
            head = self._head(method, path, query)
        # canonical_request's text, from the cached head (tests pin that both give the same).
        canonical = f"{head}{body_sha256(body)}\n{timestamp}\n{nonce}\n{key_id}"
        mac = keyed.copy()
        mac.update(canonical.encode("utf-8"))
        # Both are ASCII hex (parse_headers checked the signature's form): compare_digest takes them as str.
        if not hmac.compare_digest(mac.hexdigest(), signature.lower()):
            raise Unauthenticated(
                f"signature does not match for key {key_id!r}; details.canonical_request is what the "
                "server signed (compare it with the client's)",
                details={"canonical_request": canonical},
            )
        if self.nonces.seen(key_id, nonce, now):
            raise _replayed(key_id, nonce)
        return signed

    def _head(self, method: str, path: str, query: str | bytes) -> str:
        """The canonical request's first four lines and a newline, cached.

        Raises:
            Unauthenticated: the path or query cannot be canonicalized.
        """
        try:
            head = f"{SCHEME}\n{method.upper()}\n{canonical_path(path)}\n{canonical_query(query)}\n"
        except (UnicodeDecodeError, ValueError) as exc:
            raise Unauthenticated(f"the path or query cannot be canonicalized (not UTF-8): {exc}") from None
        if len(self._heads) >= _HEAD_CACHE_MAX:
            self._heads.clear()
        self._heads[(method, path, query)] = head
        return head

    def _stale(self, timestamp: str, skew: float, now: float) -> Unauthenticated:
        when = "in the future" if skew > 0 else "in the past"
        return Unauthenticated(
            f"{HEADER_TIMESTAMP} {timestamp} is {abs(skew):.0f} s {when}; the limit is "
            f"clock_skew_s={self.clock_skew_s:g} (server time {now:.0f}): check the client's clock",
            details={"server_time": int(now)},
        )


def _replayed(key_id: str, nonce: str) -> Unauthenticated:
    return Unauthenticated(
        f"{HEADER_NONCE} {nonce!r} was already used with key {key_id!r}: a replay; send a new nonce with every request"
    )
