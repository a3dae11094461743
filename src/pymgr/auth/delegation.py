"""Delegation: a local user the policy names acts for a person, and the policy judges that person.

Rules:
- ``[[policy.delegates]]`` names each delegate (``user:NAME`` or ``uid:N``), the
  namespace of the people it vouches for and the roles it may assert. A request
  from it may carry ``X-Pymgr-On-Behalf-Of: NAME`` and ``X-Pymgr-Roles: a,b``;
  the call is then the person's: ``NAMESPACE:NAME`` with ``role:ROLE`` each, and
  nothing else (``_policysyntax.subject_matches``): not the delegate's user,
  uid or groups, not ``owner``, not ``any``. A delegate can name no one outside
  its namespace (the namespace is the daemon's to add, not the request's) and
  no role outside its list.
- A delegate's request without a person is refused (403) unless its entry
  says ``own_calls = true``; then it is the delegate's own call, judged by the
  rules naming its user, uid, groups or ``any``. So a compromised delegate
  gets what the policy grants its namespace and roles, plus, with
  ``own_calls``, whatever its own uid is granted (its user, uid, groups,
  ``any``; ``owner`` too if it runs as the daemon's uid): a delegate wants a
  user of its own (docs/security.md). Rules naming its user are a start-up note.
- Names are checked strictly: ASCII letters, digits and ``. _ @ -``, starting
  with a letter or digit, at most ``[policy] max_person_name_length``
  characters; roles are a comma-separated list (spaces around commas allowed),
  each given once. A header given twice, roles without a person, or a
  malformed name is 400 ``bad_params``; a caller that is no delegate, a role
  not in its list, or a request on another transport is 403 ``forbidden``.
  Every refusal is counted among the audit's refusals.
- Only the Unix socket: the kernel names the delegate there. A signed TCP
  request's headers are not covered by its signature (``signing.py``), so a
  person named in one could be changed on the way; the legacy protocol has
  no headers. Both are refused, not ignored.
- The identity keeps the delegate's fields (uid, user, pid, ...) beside
  ``person`` and ``roles``: the audit line and a task's ``started_by`` name
  both. Rates and connection caps stay the delegate's (``guard.identity_key``):
  a delegate could invent any number of names, so a person cannot be a key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from pymgr.auth._policysyntax import Subject, describe_identity, parse_subject, subject_matches
from pymgr.auth.policyconfig import ROLE_PATTERN, PolicyConfig
from pymgr.core.identity import Identity
from pymgr.errors import Forbidden, MalformedRequest

__all__ = [
    "HEADERS",
    "HEADER_ON_BEHALF_OF",
    "HEADER_ROLES",
    "NO_DELEGATES",
    "PERSON_NAME_PATTERN",
    "Delegation",
]

HEADER_ON_BEHALF_OF = "X-Pymgr-On-Behalf-Of"
HEADER_ROLES = "X-Pymgr-Roles"
_ON_BEHALF_OF = HEADER_ON_BEHALF_OF.lower().encode()
_ROLES = HEADER_ROLES.lower().encode()
#: Both, as the HTTP reader gives names (lower case): ``x-pymgr-*`` but no signing headers (``guard``).
HEADERS = frozenset({_ON_BEHALF_OF, _ROLES})
#: A person's name: what login names, e-mail addresses and LDAP uids are made of; no ':' (a subject's
#: separator), no '/', no space, no control or non-ASCII character (which a log or a terminal could misread).
PERSON_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]*$"
_PERSON_NAME = re.compile(PERSON_NAME_PATTERN)
_ROLE = re.compile(ROLE_PATTERN)


@dataclass(frozen=True, slots=True)
class _Delegate:
    subject: Subject
    namespace: str
    roles: frozenset[str]
    own_calls: bool


class Delegation:
    """The delegates of one policy, and the identity a request stands for.

    Args:
        config: the ``[policy]`` section (its ``delegates`` and ``max_person_name_length``).
        owner_uid: the daemon's own uid (for ``subject_matches``; a delegate is never ``owner``).
    """

    def __init__(self, config: PolicyConfig, owner_uid: int) -> None:
        self._delegates = tuple(
            _Delegate(parse_subject(d.subject), d.namespace, frozenset(d.roles), d.own_calls)
            for d in config.delegates
        )
        self._max_name = config.max_person_name_length
        self._owner_uid = owner_uid

    def resolve(self, identity: Identity, headers: list[tuple[bytes, bytes]]) -> Identity:
        """The identity the policy judges: the caller's own, or the person a delegate acts for.

        Raises:
            MalformedRequest: a header twice, roles without a person, a malformed name or role list.
            Forbidden: the caller is no delegate, a role is not its to assert, or not on the Unix socket.
        """
        name, roles_text = _headers(headers)
        if name is None and roles_text is None:
            return identity
        if identity.transport != "unix":
            who = describe_identity(identity)
            raise Forbidden(
                f"{HEADER_ON_BEHALF_OF} is served on the Unix socket only ({who} called over "
                f"{identity.transport}); send the request without it",
                details={"caller": who},
            )
        delegate = self._delegate_of(identity)
        if delegate is None:
            who = describe_identity(identity)
            raise Forbidden(
                f"{who} is no delegate: it may not act on behalf of others ([[policy.delegates]] names who may); "
                f"send the request without {HEADER_ON_BEHALF_OF} and {HEADER_ROLES}",
                details={"caller": who},
            )
        if name is None:  # after "is no delegate": either header from anyone else is 403, as documented
            raise MalformedRequest(f"{HEADER_ROLES} without {HEADER_ON_BEHALF_OF}: roles are a person's")
        self._check_name(name)
        roles = _roles(roles_text or "")
        if not delegate.roles.issuperset(roles):
            raise _not_its_role(identity, delegate, roles)
        return replace(identity, person=f"{delegate.namespace}:{name}", roles=roles)

    def own_call_refusal(self, identity: Identity, who: str) -> str | None:
        """Why a delegate's call without a person is refused (None: it is no delegate, or ``own_calls``).

        Args:
            who: the caller as the message names it.
        """
        delegate = self._delegate_of(identity)
        if delegate is None or delegate.own_calls:
            return None
        return (
            f"{who} is a delegate ([[policy.delegates]], namespace {delegate.namespace!r}) and calls only for "
            f"a person: send {HEADER_ON_BEHALF_OF}, or set own_calls = true on its entry to let it call as itself"
        )

    def _delegate_of(self, identity: Identity) -> _Delegate | None:
        return next(
            (d for d in self._delegates if subject_matches(d.subject, identity, self._owner_uid)), None
        )

    def _check_name(self, name: str) -> None:
        if len(name) > self._max_name:
            raise MalformedRequest(
                f"{HEADER_ON_BEHALF_OF} is {len(name)} characters, more than max_person_name_length="
                f"{self._max_name}",
                details={"limit": self._max_name, "size": len(name)},
            )
        if not _PERSON_NAME.fullmatch(name):  # fullmatch: "$" alone lets a trailing newline through
            raise MalformedRequest(
                f"{HEADER_ON_BEHALF_OF} {name!r} is not a person's name: ASCII letters, digits and . _ @ -, "
                "starting with a letter or digit"
            )


def _not_its_role(identity: Identity, delegate: _Delegate, roles: tuple[str, ...]) -> Forbidden:
    role = next(role for role in roles if role not in delegate.roles)
    who = describe_identity(identity)
    allowed = ", ".join(sorted(delegate.roles)) or "(none)"
    return Forbidden(
        f"{who} may not assert role {role!r}; its roles are: {allowed}", details={"caller": who, "role": role}
    )


def _headers(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """The two headers' values (latin-1, as sent), None where absent.

    Raises:
        MalformedRequest: one of them appears twice.
    """
    name = roles = None
    for key, value in headers:
        if key == _ON_BEHALF_OF:
            if name is not None:
                raise MalformedRequest(f"{HEADER_ON_BEHALF_OF} appears more than once; send it once")
            name = value.decode("latin-1")
        elif key == _ROLES:
            if roles is not None:
                raise MalformedRequest(
                    f"{HEADER_ROLES} appears more than once; send the roles in one, comma-separated"
                )
            roles = value.decode("latin-1")
    return name, roles


def _roles(text: str) -> tuple[str, ...]:
    """``a, b`` -> ("a", "b"); empty means none.

    Raises:
        MalformedRequest: an empty item or a role given twice.
    """
    if not text.strip(" \t"):
        return ()
    roles = tuple(item.strip(" \t") for item in text.split(","))
    for index, role in enumerate(roles):
        if not _ROLE.fullmatch(role):  # checked before it is named in a message: at most 64 characters then
            raise MalformedRequest(
                f"{HEADER_ROLES} holds {role[:64]!r}, which is not a role name (letters, digits, . _ -); "
                "write roles as a,b"
            )
        if role in roles[:index]:
            raise MalformedRequest(f"{HEADER_ROLES}: role {role!r} is given twice")
    return roles


#: No delegates at all (a dispatcher without a policy): every ``X-Pymgr-On-Behalf-Of`` is refused.
NO_DELEGATES = Delegation(PolicyConfig(), owner_uid=-1)
