"""HMAC request signing: canonical forms, the pinned worked example, every refusal."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymgr.auth.nonces import NonceCache
from pymgr.auth.signing import (
    Verifier,
    canonical_path,
    canonical_query,
    canonical_request,
    sign,
    signed_headers,
)
from pymgr.errors import Unauthenticated, Unavailable

# The worked example of docs/security.md ("Signed requests"): change one and the other together.
EXAMPLE_SECRET = b"pymgr-example-secret-0123456789"
EXAMPLE_BODY = b'{"greeting":"hi"}'
EXAMPLE_CANONICAL = (
    "PYMGR-HMAC-SHA256\nPOST\n/v1/modules/demo/echo\n\n"
    "5becb8c5090f72651c7dceac3b525fbb3ca8cf3dc2d3874007938a5f16b60bdc\n1700000000\nZm9vYmFyYmF6cXV4MTIz\nci"
)
EXAMPLE_SIGNATURE = "fccc07d28329e42607ff21fcf1d4c000d5dfed6b3e7238adf27465a4da05f7c3"
NOW = 1_700_000_000.0
SKEW = 300.0


def test_the_documented_worked_example() -> None:
    canonical = canonical_request(
        "POST",
        "/v1/modules/demo/echo",
        "",
        EXAMPLE_BODY,
        timestamp="1700000000",
        nonce="Zm9vYmFyYmF6cXV4MTIz",
        key_id="ci",
    )
    assert canonical == EXAMPLE_CANONICAL
    assert sign(EXAMPLE_SECRET, canonical) == EXAMPLE_SIGNATURE
    headers = signed_headers(
        "ci",
        EXAMPLE_SECRET,
        "post",
        "/v1/modules/demo/echo",
        b"",
        EXAMPLE_BODY,
        timestamp=1700000000,
        nonce="Zm9vYmFyYmF6cXV4MTIz",
    )
    assert headers == {
        "X-Pymgr-Key": "ci",
        "X-Pymgr-Timestamp": "1700000000",
        "X-Pymgr-Nonce": "Zm9vYmFyYmF6cXV4MTIz",
        "X-Pymgr-Signature": EXAMPLE_SIGNATURE,
    }


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_another_implementation_agrees() -> None:
    # What a client in another language does, with openssl standing in for it.
    body_hash = hashlib.sha256(EXAMPLE_BODY).hexdigest()
    text = (
        f"PYMGR-HMAC-SHA256\nPOST\n/v1/modules/demo/echo\n\n{body_hash}\n1700000000\nZm9vYmFyYmF6cXV4MTIz\nci"
    )
    out = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", EXAMPLE_SECRET.decode()],
        input=text.encode(),
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert out.stdout.decode().strip().endswith(EXAMPLE_SIGNATURE)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", ""),
        ("type=scan&state=running", "state=running&type=scan"),
        ("b=2&a=%7e&a=1&c&d=x+y&e=%2F&&", "a=1&a=~&b=2&c=&d=x%20y&e=%2F"),
        ("k=%E2%9C%93", "k=%E2%9C%93"),
        ("k=%e2%9c%93", "k=%E2%9C%93"),
        (b"n=a%20b", "n=a%20b"),
    ],
)
def test_canonical_query(raw: str | bytes, canonical: str) -> None:
    assert canonical_query(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/v1/health", "/v1/health"),
        ("/v1/modules/a%20b/x", "/v1/modules/a%20b/x"),
        ("/v1/modules/a b/x", "/v1/modules/a%20b/x"),
        ("/v1/tasks/%7e", "/v1/tasks/~"),
        ("/v1/modules/a%2Fb/x", "/v1/modules/a%2Fb/x"),
        ("/v1/modules/a%2fb/x", "/v1/modules/a%2Fb/x"),
    ],
)
def test_canonical_path(raw: str, canonical: str) -> None:
    assert canonical_path(raw) == canonical


def test_non_utf8_escapes_are_refused() -> None:
    with pytest.raises(ValueError):
        canonical_query("k=%ff")
    with pytest.raises(ValueError):
        canonical_path("/v1/%ff")


# --- the verifier --------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(clock: Clock | None = None, max_nonces: int = 100) -> Verifier:
    keys = {"ci": b"ci-secret-0123456789", "old": b"old-secret-0123456789"}
    return Verifier(keys, clock_skew_s=SKEW, nonces=NonceCache(max_nonces), clock=clock or Clock(NOW))


def headers_for(
    key_id: str = "ci",
    secret: bytes = b"ci-secret-0123456789",
    *,
    timestamp: int = int(NOW),
    nonce: str = "n" * 16,
    method: str = "POST",
    path: str = "/v1/modules/demo/echo",
    query: str = "",
    body: bytes = b"{}",
) -> dict[str, str]:
    headers = signed_headers(key_id, secret, method, path, query, body, timestamp=timestamp, nonce=nonce)
    return {name.lower(): value for name, value in headers.items()}


def check(
    v: Verifier,
    headers: dict[str, str],
    *,
    method: str = "POST",
    path: str = "/v1/modules/demo/echo",
    query: str = "",
    body: bytes = b"{}",
) -> str:
    return v.verify(method, path, query, body, headers)


def test_a_good_request_gives_its_key_and_both_rotation_keys_work() -> None:
    v = verifier()
    assert check(v, headers_for()) == "ci"
    assert check(v, headers_for("old", b"old-secret-0123456789", nonce="o" * 16)) == "old"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"drop": "x-pymgr-signature"},
            r"^request is not signed: missing X-Pymgr-Signature; TCP callers sign every request",
        ),
        (
            {"drop": "all"},
            r"^request is not signed: missing X-Pymgr-Key, X-Pymgr-Timestamp, X-Pymgr-Nonce, X-Pymgr-Signature;",
        ),
        ({"set": ("x-pymgr-timestamp", "17e8")}, r"^X-Pymgr-Timestamp must be Unix seconds, not '17e8'$"),
        (
            {"set": ("x-pymgr-nonce", "short")},
            r"^X-Pymgr-Nonce must be 16-64 of \[A-Za-z0-9_-\], not 'short'$",
        ),
        ({"set": ("x-pymgr-nonce", "n" * 15 + "\n")}, r"^X-Pymgr-Nonce must be 16-64 of"),
        ({"set": ("x-pymgr-key", "a b")}, r"^X-Pymgr-Key must be 1-64 of \[A-Za-z0-9\._-\], not 'a b'$"),
        ({"set": ("x-pymgr-signature", "zz")}, r"^X-Pymgr-Signature must be 64 hex digits, not 'zz'$"),
        ({"set": ("x-pymgr-key", "nobody")}, r"^unknown key id 'nobody'$"),
    ],
)
def test_malformed_and_unsigned_requests(change: dict[str, Any], message: str) -> None:
    headers = headers_for()
    if change.get("drop") == "all":
        headers = {}
    elif "drop" in change:
        del headers[change["drop"]]
    else:
        name, value = change["set"]
        headers[name] = value
    with pytest.raises(Unauthenticated, match=message):
        check(verifier(), headers)


def test_wrong_signatures_show_the_canonical_request() -> None:
    v = verifier()
    with pytest.raises(
        Unauthenticated, match=r"^signature does not match for key 'ci'; details\.canonical_request"
    ) as info:
        check(v, headers_for(secret=b"wrong-secret-0123456789"))
    assert info.value.details == {
        "canonical_request": canonical_request(
            "POST", "/v1/modules/demo/echo", "", b"{}", timestamp=str(int(NOW)), nonce="n" * 16, key_id="ci"
        )
    }
    for tamper in (
        {"body": b'{"a":1}'},
        {"path": "/v1/modules/demo/sleep"},
        {"method": "PUT"},
        {"query": "x=1"},
    ):
        with pytest.raises(Unauthenticated, match=r"^signature does not match"):
            check(v, headers_for(nonce="t" * 16), **tamper)  # type: ignore[arg-type]


def test_the_clock_skew_window_both_sides() -> None:
    v = verifier()
    assert check(v, headers_for(timestamp=int(NOW - SKEW), nonce="a" * 16)) == "ci"
    assert check(v, headers_for(timestamp=int(NOW + SKEW), nonce="b" * 16)) == "ci"
    with pytest.raises(
        Unauthenticated,
        match=r"^X-Pymgr-Timestamp 1699999699 is 301 s in the past; the limit is "
        r"clock_skew_s=300 \(server time 1700000000\): check the client's clock$",
    ):
        check(v, headers_for(timestamp=int(NOW - SKEW - 1), nonce="c" * 16))
    with pytest.raises(Unauthenticated, match=r"^X-Pymgr-Timestamp 1700000301 is 301 s in the future; "):
        check(v, headers_for(timestamp=int(NOW + SKEW + 1), nonce="d" * 16))


def test_a_replay_inside_the_window_is_refused_and_expires_with_it() -> None:
    clock = Clock(NOW)
    v = verifier(clock)
    headers = headers_for()
    assert check(v, headers) == "ci"
    with pytest.raises(
        Unauthenticated, match=r"^X-Pymgr-Nonce 'nnnnnnnnnnnnnnnn' was already used with key 'ci': a replay; "
    ):
        check(v, headers)
    # The same nonce under another key is another request.
    assert check(v, headers_for("old", b"old-secret-0123456789")) == "old"
    clock.now = NOW + SKEW + 1  # its timestamp has left the window: refused for that, and forgotten
    with pytest.raises(Unauthenticated, match=r"in the past"):
        check(v, headers)
    assert check(v, headers_for(timestamp=int(clock.now), nonce="z" * 16)) == "ci"
    assert len(v.nonces) == 1


def test_a_bad_signature_does_not_burn_the_nonce() -> None:
    v = verifier()
    with pytest.raises(Unauthenticated):
        check(v, headers_for(secret=b"wrong-secret-0123456789"))
    assert check(v, headers_for()) == "ci"


def test_nonce_cache_size_limit_both_sides() -> None:
    cache = NonceCache(max_entries=2)
    assert cache.add("k", "a", expires_at=10, now=0)
    assert cache.add("k", "b", expires_at=20, now=0)
    assert len(cache) == 2
    with pytest.raises(
        Unavailable, match=r"^the nonce cache is full \(2 live nonces, nonce_cache_max\); retry in a few "
    ):
        cache.add("k", "c", expires_at=30, now=5)
    assert cache.add("k", "c", expires_at=30, now=10.5)  # "a" expired at 10: room again
    assert not cache.add("k", "b", expires_at=20, now=11)
    assert len(cache) == 2
    with pytest.raises(ValueError, match=r"^max_entries and per_key must be positive, not 0 and 0$"):
        NonceCache(0)


def test_nonce_quota_per_key_both_sides_and_other_keys_keep_their_room() -> None:
    cache = NonceCache(max_entries=4, per_key=2)
    assert cache.add("a", "n1", expires_at=10, now=0) and cache.add("a", "n2", expires_at=20, now=0)
    with pytest.raises(
        Unavailable, match=r"^key 'a' has 2 live nonces, its quota \(nonce_quota_per_key=2\); "
    ):
        cache.add("a", "n3", expires_at=30, now=1)
    assert cache.add("b", "n1", expires_at=30, now=1) and cache.add("b", "n2", expires_at=30, now=1)
    assert (cache.count("a"), cache.count("b"), len(cache)) == (2, 2, 4)
    assert cache.add("a", "n3", expires_at=30, now=10.5)  # a's "n1" expired at 10: its room is back
    assert not cache.seen("a", "n1", now=10.5) and cache.seen("a", "n3", now=10.5)
    assert cache.count("a") == 2
    with pytest.raises(ValueError, match=r"^max_entries and per_key must be positive, not 4 and 0$"):
        NonceCache(4, per_key=0)


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    path=st.lists(
        st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=8), max_size=4
    ),
    query=st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6)), max_size=4),
    body=st.binary(max_size=64),
)
def test_sign_then_verify_round_trips_through_any_encoding(
    method: str, path: list[str], query: list[tuple[str, str]], body: bytes
) -> None:
    from urllib.parse import quote, urlencode

    raw_path = "/" + "/".join(quote(p, safe="") for p in path)
    raw_query = urlencode(query)
    v = verifier()
    headers = headers_for(method=method, path=raw_path, query=raw_query, body=body)
    assert check(v, headers, method=method, path=raw_path, query=raw_query, body=body) == "ci"


@pytest.mark.parametrize("header", ["x-pymgr-key", "x-pymgr-timestamp", "x-pymgr-nonce", "x-pymgr-signature"])
def test_a_header_with_a_newline_is_refused_naming_it(header: str) -> None:
    # The four are checked in one pattern over their "\n"-joined values: a value with a "\n" of its own
    # must not shift the split, and the per-header message must still name it.
    headers = headers_for()
    headers[header] = headers[header] + "\n"
    with pytest.raises(Unauthenticated, match=rf"^{header.title()} must be "):
        check(verifier(), headers)
    headers = headers_for()
    headers["x-pymgr-key"], headers["x-pymgr-timestamp"] = "ci\n1700000000", "n" * 16
    with pytest.raises(Unauthenticated, match=r"^X-Pymgr-Key must be "):
        check(verifier(), headers)


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("POST", "/v1/modules/demo/echo", ""),
        ("post", "/v1/modules/a%20b/x", b"b=2&a=1"),
        ("GET", "/v1/tasks", "z=1&a"),
    ],
)
def test_the_cached_head_gives_canonical_requests_text(method: str, path: str, query: str | bytes) -> None:
    v = verifier()
    for nonce in ("a" * 16, "b" * 16):  # the second uses the cached head
        with pytest.raises(Unauthenticated, match=r"^signature does not match") as info:
            v.verify(method, path, query, b"{}", headers_for(nonce=nonce, secret=b"wrong-secret-0123456789"))
        assert info.value.details == {
            "canonical_request": canonical_request(
                method, path, query, b"{}", timestamp=str(int(NOW)), nonce=nonce, key_id="ci"
            )
        }
    assert (
        check(
            v,
            headers_for(nonce="c" * 16, method=method.upper(), path=path, query=query),  # type: ignore[arg-type]
            method=method,
            path=path,
            query=query,
        )
        == "ci"
    )  # type: ignore[arg-type]
    assert len(v._heads) == 1


def test_a_path_that_cannot_be_canonicalized_is_refused_and_not_cached() -> None:
    v = verifier()
    with pytest.raises(Unauthenticated, match=r"^the path or query cannot be canonicalized \(not UTF-8\): "):
        check(v, headers_for(), path="/v1/modules/%ff/x")
    assert v._heads == {}


def test_nonce_quota_config_both_sides_and_the_default_share() -> None:
    from pymgr.auth.settings import AuthConfig

    keys = [{"id": "a", "secret": "a" * 16}, {"id": "b", "secret": "b" * 16}]
    assert AuthConfig.model_validate({"keys": keys, "nonce_cache_max": 10}).nonce_quota() == 5
    assert (
        AuthConfig.model_validate(
            {"keys": keys, "nonce_cache_max": 10, "nonce_quota_per_key": 5}
        ).nonce_quota()
        == 5
    )
    with pytest.raises(
        ValueError, match=r"nonce_quota_per_key=6 x 2 keys = 12 is more than nonce_cache_max=10: "
    ):
        AuthConfig.model_validate({"keys": keys, "nonce_cache_max": 10, "nonce_quota_per_key": 6})
