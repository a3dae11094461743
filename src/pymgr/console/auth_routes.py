"""Sign in and out: the login form, its checks, the session cookie.

Rules:
- One answer for a wrong name and a wrong password, after the same work (``users.verify``),
  and the same wait for any name (``throttle``): nothing tells which names exist.
- The login form has its own CSRF token (a random cookie echoed in the form), so another site
  cannot sign a browser in under the attacker's account.
- The cookie is HttpOnly and SameSite=Strict, and Secure (with the ``__Host-`` prefix) over HTTPS.
- Neither a password nor a session id is ever logged; a failed login logs the name and address.
- A person the sign-in proxy names (``proxy.py``) is not shown the login form, and signing out of
  the console says that signing out is the proxy's (``proxy_logout_url``): the proxy would sign
  them in again at their next request.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pymgr.console import users
from pymgr.console.state import COOKIE, SECURE_COOKIE, set_session_cookie
from pymgr.console.websec import same_site, token_matches

if TYPE_CHECKING:
    from pymgr.console.state import Console

log = logging.getLogger("pymgr.console")

LOGIN_COOKIE = "pymgr_login"
#: Longest name and password a login form may carry (argon2 hashes any length: bound the work).
MAX_NAME_CHARS = 64
MAX_PASSWORD_CHARS = 1024


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str


async def check_password(
    console: Console, name: str, password: str, address: str, what: str
) -> users.User | Refusal:
    """``name``'s password checked as a login checks it, for a login and a dangerous action's re-entry
    alike: the same delays, failures counted and logged (``what``: which), a success clearing the name's.
    """
    if len(password) > MAX_PASSWORD_CHARS:
        return Refusal(400, f"A password is at most {MAX_PASSWORD_CHARS} characters.")
    wait_s = console.throttle.wait_s(name, address)
    if wait_s > 0:
        return Refusal(429, f"Too many failed sign-ins: try again in {wait_s:.0f} s.")
    user = await run_in_threadpool(users.verify, console.users(), name, password)
    if user is None:
        console.throttle.failed(name, address)
        log.warning("failed %s for %r from %s", what, name[:MAX_NAME_CHARS], address)
        return Refusal(401, "Wrong password.")
    console.throttle.succeeded(name)
    return user


def _next(request: Request) -> str:
    """Where to go after login: a path of this site only (never //other.host or a URL)."""
    target = request.query_params.get("next", "/tasks")
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/tasks"


def _login_page(request: Request, status: int = 200, message: str = "") -> Response:
    console: Console = request.app.state.console
    token = secrets.token_urlsafe(32)
    reply = console.render(
        request, "login.html", status, login_csrf=token, message=message, next=_next(request)
    )
    secure = request.url.scheme == "https"
    reply.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/login")
    return reply


async def login_form(request: Request) -> Response:
    console: Console = request.app.state.console
    _, session = console.session(request)
    if session is not None and session.via_proxy:  # the sign-in proxy has signed this person in
        return RedirectResponse(_next(request), 303)
    return _login_page(request)


async def login(request: Request) -> Response:
    console: Console = request.app.state.console
    form = await request.form()
    if not same_site(request) or not token_matches(
        request.cookies.get(LOGIN_COOKIE, ""), form.get("login_csrf")
    ):
        return _login_page(request, 403, "This form is stale or not from this site: try again.")
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    address = request.client.host if request.client else "?"
    if len(name) > MAX_NAME_CHARS:
        return _login_page(request, 400, f"A name is at most {MAX_NAME_CHARS} characters.")
    checked = await check_password(console, name, password, address, "login")
    if isinstance(checked, Refusal):
        message = "Wrong name or password." if checked.status == 401 else checked.message
        return _login_page(request, checked.status, message)
    user, known = checked, console.users()
    if users.needs_rehash(user):
        known[name] = users.rehashed(user, password)
        users.save(console.config.users_file, known)
    token, _ = console.sessions.create(user.name, user.roles)
    log.info("login of %s from %s", user.name, address)
    reply = RedirectResponse(_next(request), 303)
    set_session_cookie(request, reply, token)
    reply.delete_cookie(LOGIN_COOKIE, path="/login")
    return reply


async def logout(request: Request) -> Response:
    console: Console = request.app.state.console
    token, session = console.session(request)
    form = await request.form()
    if session is not None and (not same_site(request) or not token_matches(session.csrf, form.get("csrf"))):
        return console.render(
            request, "error.html", 403, session=session, message="This form is stale: reload and try again."
        )
    console.sessions.end(token)
    if session is not None:
        log.info("logout of %s", session.user)
    reply: Response = RedirectResponse("/login", 303)
    if session is not None and session.via_proxy:
        # The proxy signed them in and would again at the next request: signing out is the proxy's.
        reply = console.render(request, "signed_out.html", logout_url=console.config.proxy_logout_url)
    for name in (COOKIE, SECURE_COOKIE):
        reply.delete_cookie(
            name, path="/", secure=name.startswith("__Host-"), httponly=True, samesite="strict"
        )
    return reply


def routes() -> list[Route]:
    return [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
