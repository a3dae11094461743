"""The fixed pieces of the OpenAPI document: envelopes, error responses, query parameters, servers.

Rules:
- Shapes the daemon's core already types (a task record, an event, a log chunk) are not
  written here: they come from the actions' return annotations (``tasks/shapes.py``) through
  ``ActionSpec.result_schema``. What is here is the HTTP edge's own: the envelopes, the error
  codes, the health reply, the module listing, the query strings the routes parse.
- Every response an operation can give is listed with its schema; the error statuses come
  from the error classes (``pymgr.errors``), not from a second table.
"""

from __future__ import annotations

from typing import Any

from pymgr import errors
from pymgr.tasks.states import TaskState
from pymgr.transport.http.limits import RequestTimeout

JSON = "application/json"
REF = "#/components/schemas/{model}"

#: Every error code a reply can carry: the classes of ``pymgr.errors`` own them (and the HTTP edge's 405 and 408).
ERROR_CODES = sorted(
    {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.PymgrError)
    }
    | {RequestTimeout.code}
)

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Whole seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    }
}

#: Each error status and when it happens.
_ERROR_TEXT = {
    "400": "Bad params, or a malformed request or query string (details.errors lists the fields)",
    "401": "Not authenticated: an unsigned or badly signed request on TCP",
    "403": "The policy does not allow this caller this operation",
    "404": "No such module, action, task or route",
    "408": "The request's head or body did not arrive in time ([http] header_timeout_s, body_timeout_s)",
    "409": "Conflict: a task key held by a run of another type, or a cap on active runs reached",
    "413": "The request's head, body or params are over their limit",
    "429": "Rate limited; Retry-After says when to try again",
    "500": "The action failed, or its audit record could not be written (not_recorded)",
    "503": "Unavailable: shutting down, or the task store or keeper unreachable",
}

#: The statuses every operation can reply with, whatever it does: the connection's and the TCP guard's.
EVERY_ROUTE = ("400", "401", "408", "413", "429", "500", "503")
#: What a call through the policy adds (a task route, ``/v1/events``, ``/metrics``).
A_CALL = ("403", "404")


def errors_for(*statuses: str) -> dict[str, Any]:
    """The error responses of one operation: the envelope, and Retry-After with a 429."""
    responses: dict[str, Any] = {}
    for status in sorted({*EVERY_ROUTE, *statuses}):
        response: dict[str, Any] = {
            "description": _ERROR_TEXT[status],
            "content": {JSON: {"schema": {"$ref": REF.format(model="Error")}}},
        }
        if status == "429":
            response["headers"] = _RETRY_AFTER
        responses[status] = response
    return responses


def ok(result: dict[str, Any], description: str) -> dict[str, Any]:
    """The success envelope ``{"ok": true, "result": ...}`` around ``result``'s schema."""
    envelope = {
        "type": "object",
        "required": ["ok", "result"],
        "properties": {"ok": {"const": True}, "result": result},
    }
    return {"description": description, "content": {JSON: {"schema": envelope}}}


def query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    parameter = {"name": name, "in": "query", "required": False, "schema": schema}
    return {**parameter, "description": description} if description else parameter


_ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
_NAME = {"type": "string", "minLength": 1}
TASK_ID = {"name": "id", "in": "path", "required": True, "schema": _ID, "description": "The run's id"}

TASK_LIST_QUERY = [
    query("state", {"$ref": REF.format(model="TaskState")}, "Only runs in this state"),
    query("type", _NAME, "Only runs of this task type"),
    query("key", {**_NAME, "maxLength": 256}, "Only runs holding this key"),
    query(
        "started_by",
        {**_NAME, "maxLength": 256},
        "Only runs started by this person (console:alice, for a delegate's call) or, for a direct call, user",
    ),
    query(
        "limit",
        {"type": "integer", "minimum": 1},
        "Records a page ([tasks] list_limit; at most list_max_limit)",
    ),
    query("before", _ID, "Only records with a lower id: the next page's cursor (the Link header has it)"),
]
MODULES_QUERY = [
    query(
        "allowed",
        {"type": "boolean", "default": False},
        "true: only the actions (and task types) the caller may call, and modules that have one",
    )
]
LOG_QUERY = [
    query("offset", {"type": "integer", "minimum": 0}, "The logical offset to start at"),
    query("follow", {"type": "boolean", "default": False}, "Keep streaming until the run ended"),
    query("progress", {"type": "boolean", "default": True}, "false: without the PYMGR_PROGRESS lines"),
]
EVENTS_QUERY = [
    query("task", _ID, "Only this run (its current state comes first)"),
    query("type", _NAME, "Only runs of this task type"),
    query("key", _NAME, "Only runs holding this key"),
    query("since", {"type": "integer", "minimum": 0}, "Resume after this event id (Last-Event-ID wins)"),
    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "integer", "minimum": 0}},
]

AUDIT_QUERY = [
    query("since", {"type": "string", "format": "date-time"}, "ISO 8601: records at or after"),
    query("until", {"type": "string", "format": "date-time"}, "ISO 8601: records at or before"),
    query(
        "subject",
        _NAME,
        "user:NAME, uid:N, group:NAME, key:ID, cert:CN, legacy, role:NAME or NAMESPACE:NAME",
    ),
    query("action", _NAME, "An operation pattern (tasks.start:*)"),
    query("outcome", {"enum": ["ok", "error", "cancelled"]}, "Only records with this outcome"),
    query(
        "limit",
        {"type": "integer", "minimum": 1},
        "Records a page ([audit] read_limit; at most read_max_limit)",
    ),
    query("before", _NAME, "A page's next: the cursor of the page after it"),
]

_SOCKET = "/run/pymgr/pymgr.sock"
SERVERS = [
    {
        "url": "http://localhost",
        "description": "The Unix socket, the daemon's default listener ([http] unix_socket, "
        f"{_SOCKET}): OpenAPI cannot address a socket path, so a client connects to the socket and "
        f"sends this base URL: `curl --unix-socket {_SOCKET} http://localhost/v1/health`; httpx: "
        "`httpx.Client(transport=httpx.HTTPTransport(uds=...), base_url='http://localhost')`. "
        "The caller is who the kernel says (SO_PEERCRED).",
    },
    {
        "url": "http://{host}:{port}",
        "description": 'A TCP listener ([http] tcp = "host:port"): every '
        "request is signed (docs/security.md, 'Signed requests')",
        "variables": {"host": {"default": "127.0.0.1"}, "port": {"default": "6668"}},
    },
]

_ERROR = {
    "type": "object",
    "description": "Every error reply: the code is stable, the message says what to change",
    "required": ["ok", "error"],
    "properties": {
        "ok": {"const": False},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"enum": ERROR_CODES},
                "message": {"type": "string"},
                "details": {"type": "object", "description": "Data for a program: the fields, limits, names"},
            },
        },
    },
}
_ACTION = {
    "type": "object",
    "required": ["name", "doc", "read_only", "dangerous", "params", "allowed"],
    "properties": {
        "name": {"type": "string"},
        "doc": {"type": "string"},
        "read_only": {"type": "boolean"},
        "dangerous": {
            "type": "boolean",
            "description": "Hard to undo (@action(dangerous=True)): a front end should ask before calling it",
        },
        "params": {"type": "object", "description": "The params' JSON Schema"},
        "allowed": {
            "type": "boolean",
            "description": "The policy lets this caller call it (for a typed task action: on some type)",
        },
        "task_types": {
            "type": "object",
            "additionalProperties": {"type": "boolean"},
            "description": "tasks.start, stop and logs only: per task type, whether the policy lets this "
            "caller do this operation on it (tasks.start:TYPE ...); absent without a policy",
        },
    },
}

#: The schemas of the HTTP edge's own shapes; the actions' models join them.
SCHEMAS: dict[str, Any] = {
    "Error": _ERROR,
    "Module": {
        "type": "object",
        "required": ["name", "doc", "actions"],
        "properties": {
            "name": {"type": "string"},
            "doc": {"type": "string"},
            "actions": {"type": "array", "items": {"$ref": REF.format(model="Action")}},
        },
    },
    "Action": _ACTION,
    "Health": {
        "type": "object",
        "required": ["status", "version", "pid", "uptime_s"],
        "properties": {
            "status": {"const": "ok"},
            "version": {"type": "string"},
            "pid": {"type": "integer"},
            "uptime_s": {"type": "number", "minimum": 0},
        },
    },
    "TaskState": {"enum": [state.value for state in TaskState]},
    "TaskStart": {
        "type": "object",
        "description": "The body of POST /v1/tasks: tasks.start's params",
        "required": ["type"],
        "properties": {
            "type": {"type": "string"},
            "params": {
                "type": "object",
                "description": "The type's params (GET /v1/task-types has their schema)",
            },
            "key": {"type": ["string", "null"], "minLength": 1, "maxLength": 256},
        },
        "additionalProperties": False,
    },
}
