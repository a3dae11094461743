"""The console's Starlette app: its routes (the state they share is ``state.Console``), and what every page shares.

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
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pymgr.client import ConnectionFailed
from pymgr.console.config import ConsoleConfig
from pymgr.console.proxy import ProxyTrust
from pymgr.console.sessions import Session
from pymgr.console.websec import BodyLimit, SecurityHeaders, same_site, token_matches
from pymgr.errors import PymgrError

from pymgr.console.state import HERE, Console, Handler


async def may_read_audit(console: Console, session: Session) -> bool:
    """Whether the policy lets the person call ``audit.read`` (the daemon's listing, for the person)."""
    listing = await console.person(session).modules(allowed=True)
    return any(m.name == "audit" and a.name == "read" and a.allowed for m in listing for a in m.actions)


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
            if session.may_audit is None or session.may_audit_roles != session.roles:
                session.may_audit = await may_read_audit(console, session)
                session.may_audit_roles = session.roles
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
    from pymgr.console import actions_page, auth_routes, pages, streams

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
        *actions_page.routes(page),
        *streams.routes(page),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        Route("/", lambda request: RedirectResponse("/tasks", 303)),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(BodyLimit, max_bytes=config.max_body_bytes),
        Middleware(TrustedHostMiddleware, allowed_hosts=config.allowed_hosts),
        # Last: no session is opened for a request the others refuse.
        Middleware(ProxyTrust, console=console),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.console = console
    return app
