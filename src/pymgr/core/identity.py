"""Who is calling: the identity every transport attaches to a request.

The transport fills it in (peer credentials, a key id, the legacy
signature); the core only reads it. It is frozen so no action can change
who it was called by.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller of one request, as the daemon sees it."""

    #: "unix", "tcp", "legacy", "fleet" (a signed fleet job) or "internal" (the daemon itself).
    transport: str
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    user: str | None = None
    groups: tuple[str, ...] = field(default_factory=tuple)
    #: The HMAC key id of a signed TCP request.
    key_id: str | None = None
    #: The common name (CN) of a verified TLS client certificate.
    cert: str | None = None
    #: The peer's address for network transports ("host:port").
    peer: str | None = None
    #: The fleet key id a fleet job was signed with (``fleet:ID`` in the policy; docs/fleet.md).
    fleet_key: str | None = None
    #: The person a delegate acts for (``NAMESPACE:NAME``, ``console:alice``); the fields above are then the
    #: delegate's, and the policy sees only the person and ``roles`` (``auth/delegation.py``).
    person: str | None = None
    #: The roles the delegate asserted for ``person`` (each one its delegate may assert).
    roles: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        # Field by field, not dataclasses.asdict: that deep-copies recursively (~30 us here, on every
        # task start); every field is an immutable scalar or a tuple of str, so a shallow read is the same.
        data = {name: getattr(self, name) for name in _FIELDS}
        data["groups"] = list(self.groups)
        data["roles"] = list(self.roles)
        return data


#: Identity's field names, in order (``to_dict``).
_FIELDS = tuple(item.name for item in fields(Identity))


INTERNAL = Identity(transport="internal")
