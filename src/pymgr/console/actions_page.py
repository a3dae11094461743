"""The actions page: a form per action the person may call, its call, and the confirmation that an
action marked dangerous (``@action(dangerous=True)``) asks for first.

Rules:
- Only what the person may call is offered (``GET /v1/modules?allowed=true``, for the person); a
  forced POST to anything else is refused (403) before the daemon refuses it again.
- A dangerous action's form calls nothing: its checked params wait in the session (``Session.hold``;
  secrets never go back into a page) and a confirmation page shows what would be called. Only its
  POST, with the CSRF token, within ``confirm_timeout_s``, calls; each confirmation calls once.
- The confirmation asks for the password again when it was last typed more than ``reauth_after_s``
  ago: ``reauth.confirmed``, the gate every dangerous call of the console passes.
- With htmx, a plain action's result replaces only its own card (``HX-Request``); a dangerous one's
  form posts a whole page, as the confirmation is one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pymgr.client import ActionInfo, AsyncClient, ModuleInfo
from pymgr.console import forms
from pymgr.console.auth_routes import Refusal
from pymgr.console.reauth import asks_password, confirmed
from pymgr.console.sessions import PendingCall, Session
from pymgr.errors import PymgrError

if TYPE_CHECKING:
    from pymgr.console.state import Console

#: Modules with pages of their own rather than forms on the actions page.
OWN_PAGES = {"tasks", "audit"}

Offered = list[tuple[ModuleInfo, list[tuple[ActionInfo, list[forms.Field]]]]]
Found = tuple[ModuleInfo, ActionInfo, list[forms.Field]]


def _callable(listing: list[ModuleInfo]) -> Offered:
    shown = []
    for module in listing:
        actions = [(a, forms.fields_of(a.params)) for a in module.actions if a.allowed]
        if actions and module.name not in OWN_PAGES:
            shown.append((module, actions))
    return shown


async def _offered(request: Request, client: AsyncClient) -> tuple[Offered, Found | None]:
    """What the person may call, and the action of the request's path among it (None: not offered)."""
    wanted = (request.path_params["module"], request.path_params["action"])
    modules = _callable(await client.modules(allowed=True))
    found = [(m, a, f) for m, acts in modules for a, f in acts if (m.name, a.name) == wanted]
    return modules, found[0] if found else None


def _not_offered(request: Request, console: Console, session: Session) -> Response:
    module, action = request.path_params["module"], request.path_params["action"]
    message = f"You may not call {module}.{action} (or it does not exist)."
    return console.render(request, "error.html", 403, session=session, message=message)


async def actions_page(request: Request, console: Console, session: Session) -> Response:
    modules = _callable(await console.person(session).modules(allowed=True))
    return console.render(request, "actions.html", session=session, modules=modules, outcome={})


async def call_action(request: Request, console: Console, session: Session) -> Response:
    client = console.person(session)
    modules, found = await _offered(request, client)
    if found is None:
        return _not_offered(request, console, session)
    module, action, fields = found
    values = {k: str(v) for k, v in (await request.form()).items()}
    params, errors = forms.read(fields, values)
    outcome: dict[str, Any] = {"key": f"{module.name}.{action.name}", "errors": errors, "values": values}
    if errors:
        return _outcome(request, console, session, modules, found, outcome, 400)
    if action.dangerous:
        call_id = session.hold(PendingCall(module.name, action.name, params, console.clock()))
        return _confirm_page(request, console, session, found, params, call_id)
    status = await _call(client, module, action, params, outcome)
    return _outcome(request, console, session, modules, found, outcome, status)


async def confirm_action(request: Request, console: Console, session: Session) -> Response:
    client = console.person(session)
    modules, found = await _offered(request, client)
    if found is None:
        return _not_offered(request, console, session)
    module, action, _ = found
    form = await request.form()
    call_id = str(form.get("call", ""))
    call = session.pending.get(call_id)
    if (
        call is None
        or (call.module, call.action) != (module.name, action.name)
        or console.clock() - call.created_s > console.config.confirm_timeout_s
    ):
        session.pending.pop(call_id, None)
        message = "This confirmation has expired or was used already: fill in the action's form again."
        return console.render(request, "error.html", 409, session=session, message=message)
    refusal = await confirmed(request, console, session, form)
    if refusal is not None:
        return _confirm_page(request, console, session, found, call.params, call_id, refusal)
    del session.pending[call_id]
    outcome: dict[str, Any] = {"key": f"{module.name}.{action.name}", "errors": {}, "values": {}}
    status = await _call(client, module, action, call.params, outcome)
    return _outcome(request, console, session, modules, found, outcome, status)


def _confirm_page(
    request: Request,
    console: Console,
    session: Session,
    found: Found,
    params: dict[str, Any],
    call_id: str,
    refusal: Refusal | None = None,
) -> Response:
    module, action, fields = found
    shown = [
        (f.label, "(hidden)" if f.secret else json.dumps(params[f.name])) for f in fields if f.name in params
    ]
    return console.render(
        request,
        "confirm.html",
        refusal.status if refusal else 200,
        session=session,
        module=module,
        action=action,
        shown=shown,
        call_id=call_id,
        ask_password=asks_password(console, session),
        reauth_after_s=console.config.reauth_after_s,
        message=refusal.message if refusal else "",
    )


async def _call(
    client: AsyncClient,
    module: ModuleInfo,
    action: ActionInfo,
    params: dict[str, Any],
    outcome: dict[str, Any],
) -> int:
    """Call the action for the person; its result or the daemon's refusal goes into ``outcome``."""
    try:
        outcome["result"] = json.dumps(await client.call(module.name, action.name, params), indent=2)
    except PymgrError as exc:
        outcome.update(errors=forms.daemon_errors(exc.details), message=str(exc))
        return exc.http_status or 500
    return 200


def _outcome(
    request: Request,
    console: Console,
    session: Session,
    modules: Offered,
    found: Found,
    outcome: dict[str, Any],
    status: int,
) -> Response:
    if request.headers.get("hx-request") == "true":
        module, action, fields = found
        return console.render(
            request,
            "_action.html",
            status,
            session=session,
            module=module,
            action=action,
            fields=fields,
            outcome=outcome,
        )
    return console.render(request, "actions.html", status, session=session, modules=modules, outcome=outcome)


def routes(page: Callable[..., Any]) -> list[Route]:
    return [
        Route("/actions", page(actions_page), methods=["GET"]),
        Route("/actions/{module}/{action}", page(call_action, state_changing=True), methods=["POST"]),
        Route(
            "/actions/{module}/{action}/confirm", page(confirm_action, state_changing=True), methods=["POST"]
        ),
    ]
