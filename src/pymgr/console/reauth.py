"""The one gate every console call of a dangerous action passes (``@action(dangerous=True)``): the
actions page's confirmation and a task's stop page (``tasks.stop``) alike.

Rules:
- The call is made only from a confirmation's POST (with the CSRF token, checked by ``app.page``).
- When the password was last typed here more than ``reauth_after_s`` ago, the confirmation asks for
  it again, checked as a login is (``auth_routes.check_password``: the same delays, failures counted
  and logged); a right one counts as typed now. A session the sign-in proxy opened has no password
  here: it confirms only (docs/console.md, "Dangerous actions").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.datastructures import FormData
from starlette.requests import Request

from pymgr.console.auth_routes import Refusal, check_password
from pymgr.console.sessions import Session

if TYPE_CHECKING:
    from pymgr.console.state import Console


def asks_password(console: Console, session: Session) -> bool:
    """Whether a dangerous call's confirmation must carry the password again."""
    return not session.via_proxy and console.clock() - session.authenticated_s > console.config.reauth_after_s


async def confirmed(request: Request, console: Console, session: Session, form: FormData) -> Refusal | None:
    """None when the posted confirmation lets the dangerous call be made now; else why not (its status
    and message, for the confirmation page shown again)."""
    if not asks_password(console, session):
        return None
    address = request.client.host if request.client else "?"
    password = str(form.get("password", ""))
    checked = await check_password(console, session.user, password, address, "password confirmation")
    if isinstance(checked, Refusal):
        return checked
    session.authenticated_s = console.clock()
    return None
