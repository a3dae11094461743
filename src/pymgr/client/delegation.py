"""Acting for a person: the delegation headers a client sends when it is a ``[[policy.delegates]]`` subject.

Rules:
- A person is named by ``OnBehalfOf`` (a name and its roles), checked here with the daemon's own
  rules (docs/security.md, "Delegation"), so a bad name fails in the caller's code, not as a 400 later.
- Only on the Unix socket: the daemon refuses the headers on TCP (a signature does not cover them).
- The two header names are the daemon's (``auth/delegation.py``), written again here because the light
  client must not import the daemon's auth package; a test keeps the two equal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

HEADER_ON_BEHALF_OF = "X-Pymgr-On-Behalf-Of"
HEADER_ROLES = "X-Pymgr-Roles"

#: The daemon's patterns for a person's name and a role (auth/delegation.py, auth/policyconfig.py).
_PERSON_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
_ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The daemon's default ``[policy] max_person_name_length``.
MAX_PERSON_NAME_LENGTH = 64


@dataclass(frozen=True, slots=True)
class OnBehalfOf:
    """A person a delegate acts for: ``person`` (``alice``, judged as ``NAMESPACE:alice``) and ``roles``."""

    person: str
    roles: tuple[str, ...] = ()

    @classmethod
    def of(cls, person: str, roles: Iterable[str] = ()) -> OnBehalfOf:
        """Check ``person`` and ``roles`` as the daemon will.

        Raises:
            ValueError: a name or role the daemon would refuse, or a role given twice.
        """
        if not (_PERSON_NAME.fullmatch(person) and len(person) <= MAX_PERSON_NAME_LENGTH):
            raise ValueError(
                f"person must be 1 to {MAX_PERSON_NAME_LENGTH} ASCII letters, digits and . _ @ - "
                f"(starting with a letter or digit), not {person!r}"
            )
        checked = tuple(roles)
        for role in checked:
            if not _ROLE.fullmatch(role):
                raise ValueError(
                    f"role must be 1 to 64 ASCII letters, digits and . _ - (starting with a letter or digit), not {role!r}"
                )
        if len(set(checked)) != len(checked):
            raise ValueError(f"each role must be given once, not {list(checked)!r}")
        return cls(person, checked)

    def headers(self) -> dict[str, str]:
        headers = {HEADER_ON_BEHALF_OF: self.person}
        if self.roles:
            headers[HEADER_ROLES] = ", ".join(self.roles)
        return headers
