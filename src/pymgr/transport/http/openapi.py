"""``GET /v1/openapi.json``: the HTTP API described for readers and client generators (OpenAPI 3.1).

Built from the registry when asked (a reload can change the modules):
every action is ``POST /v1/modules/{module}/{action}`` with its parameter
schema (pydantic's JSON Schema, which OpenAPI 3.1 takes as it is; models it
refers to go to ``components/schemas``), plus the fixed routes of
docs/api.md. Caller identity is not an OpenAPI notion on a Unix socket
(the kernel's peer credentials); signed TCP requests are described as the
four headers they carry.
"""

from __future__ import annotations

from typing import Any

from pymgr.core.registry import ActionSpec, Registry

__all__ = ["describe"]

_REF = "#/components/schemas/{model}"
_JSON = "application/json"


def _ok(result: dict[str, Any] | None = None, description: str = "Success") -> dict[str, Any]:
    envelope = {
        "type": "object",
        "required": ["ok", "result"],
        "properties": {"ok": {"const": True}, "result": result or {}},
    }
    return {"description": description, "content": {_JSON: {"schema": envelope}}}


_ERRORS = {
    status: {"description": text, "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for status, text in (
        ("400", "Bad params or a malformed request"),
        ("401", "Not authenticated (an unsigned or badly signed TCP request)"),
        ("403", "The policy does not allow this caller this operation"),
        ("404", "No such module, action, task or route"),
        ("409", "Conflict (a task key held by another type)"),
        ("413", "Body, head or params too large"),
        ("429", "Rate limited; see Retry-After"),
        ("500", "The action failed"),
        ("503", "Unavailable (shutting down, the task store or keeper unreachable)"),
    )
}

_RECORD = {"$ref": "#/components/schemas/TaskRecord"}
_TASK_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}


_TASK_LIST_QUERY: list[dict[str, Any]] = [
    {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
    for name in ("state", "type", "key")
]
_TASK_LIST_QUERY += [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1},
        "description": "Records a page (default [tasks] list_limit, at most [tasks] list_max_limit)",
    },
    {
        "name": "before",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1},
        "description": "Only records with a lower id: the next page's cursor (its Link header has it)",
    },
]


#: The body of POST /v1/tasks (the tasks.start action's params, as the route takes them).
_START_BODY = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string"},
        "params": {"type": "object"},
        "key": {"type": ["string", "null"], "minLength": 1, "maxLength": 256},
    },
}
_MODULES_QUERY = [
    {
        "name": "allowed",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean", "default": False},
        "description": "true: only the actions (and task types) the caller may call, and modules that have one",
    }
]
_LOG_QUERY = [
    {"name": "offset", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
    {"name": "follow", "in": "query", "required": False, "schema": {"type": "boolean"}},
    {
        "name": "progress",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean", "default": True},
        "description": "false: without the PYMGR_PROGRESS lines",
    },
]
_ID = {"type": "integer", "minimum": 1}
_EVENTS_QUERY = [
    {"name": "task", "in": "query", "required": False, "schema": _ID, "description": "only this run"},
    {"name": "type", "in": "query", "required": False, "schema": {"type": "string", "minLength": 1}},
    {"name": "key", "in": "query", "required": False, "schema": {"type": "string", "minLength": 1}},
    {
        "name": "since",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "resume after this event id (the Last-Event-ID header wins)",
    },
    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "integer", "minimum": 0}},
]

_AUDIT_QUERY = [
    {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}
    for name, text in (
        ("since", "ISO 8601: records at or after"),
        ("until", "ISO 8601: records at or before"),
        ("subject", "user:NAME, uid:N, group:NAME, key:ID, cert:CN, legacy, role:NAME or NAMESPACE:NAME"),
        ("action", "an operation pattern (tasks.start:*)"),
        ("outcome", "ok, error or cancelled"),
        ("before", "a page's next: the cursor"),
    )
] + [{"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}}]


def _audit_route() -> dict[str, Any]:
    """GET /v1/audit: the audit.read action, its filters in the query."""
    page = _ok({"$ref": "#/components/schemas/AuditPage"}, "A page, newest first")
    return {
        "get": {
            "operationId": "getAudit",
            "summary": "The audit log's records, newest first, filtered, a page at a time (the audit.read action)",
            "parameters": _AUDIT_QUERY,
            "responses": {"200": page, **_ERRORS},
        }
    }


def _task_page() -> dict[str, Any]:
    """A page of GET /v1/tasks: the records, and the next page in a Link header."""
    page = _ok({"type": "array", "items": _RECORD}, "A page, newest first")
    link = {"description": 'The next page: <URL>; rel="next" (none when empty)', "schema": {"type": "string"}}
    page["headers"] = {"Link": link}
    return page


def _action(spec: ActionSpec, schemas: dict[str, Any]) -> dict[str, Any]:
    params = spec.params_model.model_json_schema(ref_template=_REF)
    for name, schema in params.pop("$defs", {}).items():
        schemas.setdefault(name, schema)
    return {
        "operationId": spec.qualname,
        "summary": spec.doc.split("\n")[0] if spec.doc else spec.qualname,
        "description": spec.doc,
        "tags": [spec.module],
        "requestBody": {"required": False, "content": {_JSON: {"schema": params}}},
        "responses": {"200": _ok(description="The action's result"), **_ERRORS},
        "x-pymgr-read-only": spec.options.read_only,
    }


def _fixed_routes() -> dict[str, Any]:
    def get(summary: str, response: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"get": {"summary": summary, "responses": {"200": response, **_ERRORS}, **extra}}

    text = {"description": "Bytes", "content": {"text/plain": {"schema": {"type": "string"}}}}
    page = _task_page()
    return {
        "/v1/health": get("Liveness", _ok({"type": "object"})),
        "/v1/modules": get(
            "Every module and action with their parameter schemas, marked for the caller asking",
            _ok({"type": "array", "items": {"$ref": "#/components/schemas/Module"}}),
            parameters=_MODULES_QUERY,
        ),
        "/v1/openapi.json": get("This document", {"description": "OpenAPI 3.1", "content": {_JSON: {}}}),
        "/v1/task-types": get("Task types that can be started", _ok({"type": "array"})),
        "/v1/tasks": {
            **get("Task records, newest first, a page at a time", page, parameters=_TASK_LIST_QUERY),
            "post": {
                "summary": "Start a task (the tasks.start action)",
                "requestBody": {"required": True, "content": {_JSON: {"schema": _START_BODY}}},
                "responses": {"202": _ok(_RECORD, "Accepted: the queued record"), **_ERRORS},
            },
        },
        "/v1/tasks/{id}": {**get("One task", _ok(_RECORD)), "parameters": [_TASK_ID]},
        "/v1/tasks/{id}/stop": {
            "post": {
                "summary": "Stop a task (a no-op for an ended one)",
                "responses": {"202": _ok(_RECORD, "The record as it is now"), **_ERRORS},
            },
            "parameters": [_TASK_ID],
        },
        "/v1/tasks/{id}/logs": {
            **get(
                "A task's output from a logical offset; follow=true streams until it ended",
                text,
                parameters=_LOG_QUERY,
            ),
            "parameters": [_TASK_ID],
        },
        "/v1/events": get(
            "Server-sent events: state, progress, heartbeat, gap, reset; opens with the matching runs' state",
            {"description": "A stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            parameters=_EVENTS_QUERY,
        ),
        "/v1/audit": _audit_route(),
        "/metrics": get("Counters and gauges in the Prometheus text format (the metrics module)", text),
    }


#: The schemas every document has; the actions' own models join them.
_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["ok", "error"],
        "properties": {
            "ok": {"const": False},
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}},
            },
        },
    },
    "Module": {
        "type": "object",
        "required": ["name", "doc", "actions"],
        "properties": {
            "name": {"type": "string"},
            "doc": {"type": "string"},
            "actions": {"type": "array", "items": {"$ref": "#/components/schemas/Action"}},
        },
    },
    "Action": {
        "type": "object",
        "required": ["name", "doc", "read_only", "params", "allowed"],
        "properties": {
            "name": {"type": "string"},
            "doc": {"type": "string"},
            "read_only": {"type": "boolean"},
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
    },
    "AuditPage": {
        "type": "object",
        "required": ["records", "next", "scanned_bytes", "skipped_lines"],
        "properties": {
            "records": {"type": "array", "items": {"type": "object"}, "description": "docs/security.md"},
            "next": {"type": ["string", "null"], "description": "give it back as before; null: the last"},
            "scanned_bytes": {"type": "integer"},
            "skipped_lines": {"type": "integer"},
        },
    },
    "TaskRecord": {
        "type": "object",
        "description": "docs/tasks.md, 'Records'",
        "properties": {
            "id": {"type": "integer"},
            "type": {"type": "string"},
            "state": {"enum": ["queued", "running", "succeeded", "failed", "stopped", "timed_out", "lost"]},
        },
    },
}


def describe(registry: Registry, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this daemon's API, with the actions ``registry`` serves now."""
    schemas: dict[str, Any] = {**_SCHEMAS}
    paths = _fixed_routes()
    for module in registry.names():
        for spec in registry.actions(module):
            paths[f"/v1/modules/{spec.module}/{spec.name}"] = {"post": _action(spec, schemas)}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pymgr",
            "version": version,
            "description": "A privileged task daemon's HTTP API; the reference is docs/api.md. On the Unix "
            "socket the caller is who the kernel says; on TCP every request is signed "
            "(docs/security.md, 'Signed requests').",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "signed": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Pymgr-Signature",
                    "description": "HMAC-SHA256 of the canonical request, with X-Pymgr-Key, X-Pymgr-Timestamp and "
                    "X-Pymgr-Nonce (docs/security.md)",
                }
            },
        },
    }
