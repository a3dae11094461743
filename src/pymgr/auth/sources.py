"""The source a network address counts as, for per-source caps and rates.

Rules:
- One function, ``source_of``, names the source of every network caller
  (HTTP over TCP and the legacy protocol alike), so a cap or a rate cannot
  be dodged by switching transport or address inside one source.
- Every address in 127.0.0.0/8 is one source: any local user can bind
  127.0.0.2, 127.0.0.3, ... and each loopback address is the same host.
- An IPv6 address counts by its /64: one host (or one customer of a
  provider) is routinely given a whole /64 and can pick any address in it
  (RFC 6177), so counting single addresses would multiply its caps by 2^64.
  IPv6 loopback (::1) is the same host as 127.0.0.0/8.
- An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, what a dual-stack
  listener reports) counts as its IPv4 address.
- Anything that is not an IP address (a Unix path, "?") is its own source.
"""

from __future__ import annotations

import functools
import ipaddress

__all__ = ["LOOPBACK", "source_of"]

#: The source every loopback address counts as.
LOOPBACK = "127.0.0.0/8"
#: Prefix length an IPv6 source is counted by.
IPV6_SOURCE_PREFIX = 64
#: Distinct addresses whose source stays cached: the parse is a few microseconds, paid per connection.
_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=_CACHE_SIZE)
def source_of(host: str) -> str:
    """The source ``host`` (an address without port, IPv6 without brackets) counts as.

    >>> source_of("127.0.0.5"), source_of("10.1.2.3"), source_of("2001:db8::1")
    ('127.0.0.0/8', '10.1.2.3', '2001:db8::/64')
    """
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return LOOPBACK
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_SOURCE_PREFIX), strict=False))
    return str(address)
