"""Server-side sessions: a random id in an HttpOnly cookie, everything else in memory here.

Why server-side and not a signed cookie (itsdangerous): logout must end a session at once, and an idle
timeout must be the server's to enforce; a signed cookie stays valid until it expires, wherever it was
copied to. The price, sessions end when the console restarts, is a new login.

Rules:
- The id is 256 random bits (``secrets``); the table is keyed by its SHA-256, so the ids themselves
  are nowhere in the console's memory dumps or logs, but for one exception (next rule).
- A session ends after ``idle_s`` unused or ``absolute_s`` after its login, whichever comes first,
  checked at every use; at most ``max_sessions`` are held (the least recently used one is ended).
- Each session has its own CSRF token (``csrf``), sent in forms, never in a URL.
- A session opened by a reverse proxy's user header (``via_proxy``, ``proxy.py``) holds no password:
  it is believed only on requests that carry the header again, from a trusted proxy. A person has
  one at most (``proxied``, by name, whatever cookie a request sends): requests without a cookie
  must not each open one and push everyone else's out of the table. For this its id is kept, by
  name; it signs no one in without the proxy's header, which names anyone anyway.
- A dangerous call waits in its session (``pending``, at most ``MAX_PENDING``, the oldest dropped)
  until the person confirms it: its params, secrets included, never go back into a page.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Dangerous calls one session may hold unconfirmed: a person confirms one at a time; a few tabs
#: are enough, and the bound keeps a session's memory small whatever a page posts.
MAX_PENDING = 8


@dataclass(frozen=True, slots=True)
class PendingCall:
    """A dangerous call waiting for its confirmation (``actions_page``)."""

    module: str
    action: str
    params: dict[str, Any]
    created_s: float


@dataclass(slots=True)
class Session:
    user: str
    roles: tuple[str, ...]
    created_s: float
    seen_s: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    #: Signed in by the reverse proxy's user header, not by a password typed here.
    via_proxy: bool = False
    #: When the password was last typed here: the login, or a dangerous call's confirmation.
    authenticated_s: float = 0.0
    #: Dangerous calls waiting for their confirmation, by a random id.
    pending: OrderedDict[str, PendingCall] = field(default_factory=OrderedDict)
    #: Whether the policy lets the person read the audit log (the nav's Audit link): asked of the
    #: daemon once per session and roles, None until then (a policy reloaded meanwhile shows at the
    #: next login). A proxy session's roles are the proxy's at every request: ``may_audit_roles``
    #: are those it was asked for, and other roles ask again.
    may_audit: bool | None = None
    may_audit_roles: tuple[str, ...] = ()

    def hold(self, call: PendingCall) -> str:
        """Keep ``call`` until it is confirmed; its id (for the confirmation form)."""
        call_id = secrets.token_urlsafe(16)
        self.pending[call_id] = call
        while len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)
        return call_id


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """The sessions in force; ``clock`` is monotonic seconds (a test passes its own)."""

    def __init__(
        self, idle_s: float, absolute_s: float, max_sessions: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._idle_s = idle_s
        self._absolute_s = absolute_s
        self._max = max_sessions
        self._clock = clock
        self._table: OrderedDict[str, Session] = OrderedDict()
        #: The id of each person's proxy session, by name: kept in step with the table (``_drop``).
        self._proxied: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._table)

    def create(self, user: str, roles: tuple[str, ...], via_proxy: bool = False) -> tuple[str, Session]:
        """A new session for ``user``: its id (for the cookie only) and the session."""
        now = self._clock()
        token = secrets.token_urlsafe(32)
        session = Session(user, roles, created_s=now, seen_s=now, via_proxy=via_proxy, authenticated_s=now)
        self._table[_key(token)] = session
        if via_proxy:
            self._proxied[user] = token
        while len(self._table) > self._max:
            self._drop(next(iter(self._table)))
        return token, session

    def proxied(self, user: str, roles: tuple[str, ...]) -> tuple[str, Session, bool]:
        """The session of the person a sign-in proxy names: theirs if one is in force (marked used, its
        roles replaced: the proxy decides), else a new one; its id, and whether it is new."""
        token = self._proxied.get(user)
        session = self.get(token)
        if token is not None and session is not None:
            session.roles = roles
            return token, session, False
        token, session = self.create(user, roles, via_proxy=True)
        return token, session, True

    def _drop(self, key: str) -> None:
        session = self._table.pop(key)
        token = self._proxied.get(session.user) if session.via_proxy else None
        if token is not None and _key(token) == key:
            del self._proxied[session.user]

    def get(self, token: str | None) -> Session | None:
        """The session of ``token`` if it is in force (and marks it used), else None."""
        if not token:
            return None
        key = _key(token)
        session = self._table.get(key)
        if session is None:
            return None
        now = self._clock()
        if now - session.seen_s > self._idle_s or now - session.created_s > self._absolute_s:
            self._drop(key)
            return None
        session.seen_s = now
        self._table.move_to_end(key)
        return session

    def peek(self, token: str | None) -> Session | None:
        """The session of ``token`` if it is in force, without marking it used (an open event stream
        is not a person at work: it must not keep a session from its idle timeout)."""
        session = self._table.get(_key(token)) if token else None
        now = self._clock()
        if (
            session is None
            or now - session.seen_s > self._idle_s
            or now - session.created_s > self._absolute_s
        ):
            return None
        return session

    def end(self, token: str | None) -> None:
        if token and _key(token) in self._table:
            self._drop(_key(token))
