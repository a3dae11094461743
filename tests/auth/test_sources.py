"""source_of: the one function that names a network caller's source for caps and rates."""

from __future__ import annotations

import pytest

from pymgr.auth.guard import identity_key
from pymgr.auth.sources import source_of
from pymgr.core.identity import Identity


@pytest.mark.parametrize(
    ("host", "source"),
    [
        ("127.0.0.1", "127.0.0.0/8"),
        ("127.0.0.2", "127.0.0.0/8"),
        ("127.255.255.254", "127.0.0.0/8"),
        ("::1", "127.0.0.0/8"),
        ("[::1]", "127.0.0.0/8"),
        ("::ffff:127.0.0.9", "127.0.0.0/8"),
        ("10.0.0.5", "10.0.0.5"),
        ("::ffff:10.0.0.5", "10.0.0.5"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2:ffff:ffff:ffff:ffff]", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("?", "?"),
        ("/run/pymgr.sock", "/run/pymgr.sock"),
    ],
)
def test_source_of(host: str, source: str) -> None:
    assert source_of(host) == source


def test_unsigned_tcp_and_legacy_callers_are_keyed_by_their_source() -> None:
    assert identity_key(Identity(transport="tcp", peer="127.0.0.3:4000")) == "tcp:127.0.0.0/8"
    assert identity_key(Identity(transport="legacy", peer="[2001:db8::7]:4000")) == "legacy:2001:db8::/64"
    assert identity_key(Identity(transport="tcp", peer="10.0.0.5:1", key_id="ci")) == "key:ci"
