"""What every route of the console shares: the ``Console`` (settings, the daemon client, sessions,
login limits, templates, events) and the shape of a signed-in route's handler.

Its own module so that the route modules (``pages``, ``streams``, ``auth_routes``, ``audit_page``)
and ``app``, which mounts them, all import it and none imports ``app``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from pymgr.client import AsyncClient
from pymgr.console import forms, runview, users
from pymgr.console.config import ConsoleConfig
from pymgr.console.hub import EventHub
from pymgr.console.eventview import browser_event
from pymgr.console.timedcache import TimedCache
from pymgr.console.sessions import Session, Sessions
from pymgr.console.throttle import LoginThrottle

HERE = Path(__file__).parent
#: The session cookie's name (a name with the __Host- prefix when served over HTTPS: host-only, Secure).
COOKIE = "pymgr_console"
SECURE_COOKIE = "__Host-pymgr_console"
#: Where a request's scope keeps the session a sign-in proxy's header stands for (``proxy.py``).
PROXY_SESSION = "pymgr.proxy_session"


class Console:
    """What the routes share: settings, the daemon client, sessions, login limits, templates, events."""

    def __init__(self, config: ConsoleConfig, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.client = AsyncClient(socket=config.socket, timeout_s=config.daemon_timeout_s)
        #: Monotonic seconds (a test moves its own): sessions, login delays, confirmations.
        self.clock = clock = clock or time.monotonic
        self.sessions = Sessions(config.session_idle_s, config.session_absolute_s, config.max_sessions, clock)
        self.throttle = LoginThrottle(
            config.login_free_failures, config.login_delay_s, config.login_max_delay_s, clock
        )
        self.hub = EventHub(
            self.client,
            config.stream_queue_size,
            config.max_event_streams,
            lambda event: browser_event(self.templates, event),
        )
        # auto_reload off: the templates ship in the package and do not change while the console
        # runs; on, Jinja2 stats every template a page uses (and those it extends) at every render.
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True),
            auto_reload=False,
        )
        #: The start form of the tasks page, per person (``pages._startable``).
        self.forms: TimedCache[list[tuple[str, list[forms.Field]]]] = TimedCache(
            config.form_cache_s, config.max_sessions, clock
        )
        self.templates.filters.update(
            elapsed_s=runview.elapsed_s, duration=runview.duration_text, ending=runview.ending
        )
        self.templates.tests["ticking"] = runview.ticking
        self._users: dict[str, users.User] = {}
        self._users_mtime: float | None = None

    def users(self) -> dict[str, users.User]:
        """The users file, read again when it changed (``adduser`` needs no restart)."""
        path = self.config.users_file
        mtime = path.stat().st_mtime if path.exists() else None
        if mtime != self._users_mtime:
            self._users, self._users_mtime = users.load(path), mtime
        return self._users

    def session(self, request: Request) -> tuple[str | None, Session | None]:
        """The request's session: the one the sign-in proxy's header stands for, else the cookie's
        (unless the proxy opened it: without the header, it is not believed)."""
        signed: tuple[str, Session] | None = request.scope.get(PROXY_SESSION)
        if signed is not None:
            return signed
        token, session = self.session_cookie(request)
        return token, None if session is not None and session.via_proxy else session

    def session_cookie(self, request: Request) -> tuple[str | None, Session | None]:
        """The session the request's cookie names, if it is in force (and marks it used)."""
        token = cookie_token(request)
        return token, self.sessions.get(token)

    def person(self, session: Session) -> AsyncClient:
        return self.client.acting_for(session.user, session.roles)

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        page = self.templates.get_template(name).render(request=request, **context)
        return HTMLResponse(page, status_code=status)


def cookie_token(request: Request) -> str | None:
    """The session id the request's cookie carries, if any (in force or not)."""
    return request.cookies.get(SECURE_COOKIE) or request.cookies.get(COOKIE)


def set_session_cookie(request: Request, reply: Response, token: str) -> None:
    """The session cookie: HttpOnly, SameSite=Strict; over HTTPS, Secure with the ``__Host-`` prefix."""
    secure = request.url.scheme == "https"
    name = SECURE_COOKIE if secure else COOKIE
    reply.set_cookie(name, token, httponly=True, samesite="strict", secure=secure, path="/")


Handler = Callable[[Request, Console, Session], Awaitable[Response]]
