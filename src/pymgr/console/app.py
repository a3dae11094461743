"""The console's Starlette app: its state (``Console``), its routes, and what every page shares.

Rules:
- Each page runs as the person signed in: ``Console.person(request)`` is the session's
  ``AsyncClient.acting_for`` view; the console's own rights serve only the shared event stream.
- A page without a session redirects to the login page; a state-changing request without the
  session's CSRF token or from another site is refused (403) before anything runs.
- A daemon's refusal is shown with its own status and message; a daemon that cannot be reached, 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pymgr.client import AsyncClient, ConnectionFailed
from pymgr.console import users
from pymgr.console.config import ConsoleConfig
from pymgr.console.hub import EventHub
from pymgr.console.sessions import Session, Sessions
from pymgr.console.throttle import LoginThrottle
from pymgr.console.websec import BodyLimit, SecurityHeaders, same_site, token_matches
from pymgr.errors import PymgrError

HERE = Path(__file__).parent
#: The session cookie's name (a name with the __Host- prefix when served over HTTPS: host-only, Secure).
COOKIE = "pymgr_console"
SECURE_COOKIE = "__Host-pymgr_console"


class Console:
    """What the routes share: settings, the daemon client, sessions, login limits, templates, events."""

    def __init__(self, config: ConsoleConfig, clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.client = AsyncClient(socket=config.socket, timeout_s=config.daemon_timeout_s)
        clock = clock or time.monotonic
        self.sessions = Sessions(config.session_idle_s, config.session_absolute_s, config.max_sessions, clock)
        self.throttle = LoginThrottle(
            config.login_free_failures, config.login_delay_s, config.login_max_delay_s, clock
        )
        self.hub = EventHub(self.client, config.stream_queue_size, config.max_event_streams)
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True)
        )
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
        token = request.cookies.get(SECURE_COOKIE) or request.cookies.get(COOKIE)
        return token, self.sessions.get(token)

    def person(self, session: Session) -> AsyncClient:
        return self.client.acting_for(session.user, session.roles)

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        page = self.templates.get_template(name).render(request=request, **context)
        return HTMLResponse(page, status_code=status)


Handler = Callable[[Request, Console, Session], Awaitable[Response]]


def page(handler: Handler, state_changing: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """A route for people signed in: the session, the POST checks, and the daemon's errors shown."""

    async def endpoint(request: Request) -> Response:
        console: Console = request.app.state.console
        _, session = console.session(request)
        if session is None:
            if request.method != "GET":
                return console.render(
                    request, "error.html", 401, message="Your session has ended; sign in again."
                )
            return RedirectResponse(f"/login?next={request.url.path}", 303)
        if state_changing:
            form = await request.form()
            if not same_site(request) or not token_matches(session.csrf, form.get("csrf")):
                return console.render(
                    request,
                    "error.html",
                    403,
                    session=session,
                    message="This form is stale or not from this site: reload the page and try again.",
                )
        try:
            return await handler(request, console, session)
        except ConnectionFailed:
            return console.render(
                request, "error.html", 503, session=session, message="The daemon cannot be reached."
            )
        except PymgrError as exc:
            return console.render(
                request, "error.html", exc.http_status or 500, session=session, message=str(exc)
            )

    return endpoint


def create_app(config: ConsoleConfig, clock: Callable[[], float] | None = None) -> Starlette:
    """The console's ASGI app; ``clock`` (monotonic seconds) is for tests of the timeouts."""
    from pymgr.console import auth_routes, pages, streams

    console = Console(config, clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(console.hub.run())
        try:
            yield
        finally:
            task.cancel()
            await console.client.close()

    routes = [
        *auth_routes.routes(),
        *pages.routes(page),
        *streams.routes(page),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        Route("/", lambda request: RedirectResponse("/tasks", 303)),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(BodyLimit, max_bytes=config.max_body_bytes),
        Middleware(TrustedHostMiddleware, allowed_hosts=config.allowed_hosts),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.console = console
    return app
