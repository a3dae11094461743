"""The audit page: the daemon's audit log read back (``audit.read``) as the person signed in.

Rules:
- The daemon decides who may read it (the policy's ``audit.read``, usually a role); the page shows
  its refusal as it comes. Records are shown as the daemon wrote them: secrets already redacted.
- Filters are the daemon's (time range, subject, action pattern, outcome); a person filter is the
  subject ``console:NAME``. Pages follow the daemon's ``next`` cursor (``before=``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from pymgr.console.sessions import Session

if TYPE_CHECKING:
    from pymgr.console.state import Console

#: The query names the page passes on to ``audit.read``.
FILTERS = ("since", "until", "subject", "action", "outcome", "before")
OUTCOMES = ("ok", "error", "cancelled")
#: Records a page (the daemon's default read_limit).
PAGE_SIZE = 100


def _who(identity: dict[str, Any]) -> str:
    for key in ("person", "user", "key_id", "cert"):
        if identity.get(key):
            return str(identity[key])
    return f"uid:{identity['uid']}" if "uid" in identity else "?"


def _row(record: dict[str, Any]) -> dict[str, str]:
    found = record.get("identity")
    identity: dict[str, Any] = found if isinstance(found, dict) else {}
    via = identity.get("user") or (f"uid:{identity['uid']}" if "uid" in identity else "")
    return {
        "time": str(record.get("time", "")),
        "who": _who(identity),
        "via": str(via) if identity.get("person") else "",
        "operation": str(record.get("operation", "")),
        "outcome": str(record.get("outcome", "")),
        "params": json.dumps(record.get("params", {}), sort_keys=True),
    }


async def audit_page(request: Request, console: Console, session: Session) -> Response:
    filters = {k: v for k in FILTERS if (v := request.query_params.get(k, "").strip())}
    person = request.query_params.get("person", "").strip()
    if person and "subject" not in filters:
        filters["subject"] = f"console:{person}"
    page = await console.person(session).call("audit", "read", {**filters, "limit": PAGE_SIZE})
    result: dict[str, Any] = page if isinstance(page, dict) else {}
    found = result.get("records")
    records: list[Any] = found if isinstance(found, list) else []
    shown = {k: v for k, v in filters.items() if k != "before"}
    return console.render(
        request,
        "audit.html",
        session=session,
        rows=[_row(r) for r in records if isinstance(r, dict)],
        filters=shown,
        person=person,
        outcomes=OUTCOMES,
        next=result.get("next"),
    )
