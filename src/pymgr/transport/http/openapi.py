"""``GET /v1/openapi.json``: the HTTP API described for readers and client generators (OpenAPI 3.1).

Built from the registry when asked (a reload can change the modules). The core makes
JSON Schemas (an action's params model, its result from the return annotation:
``ActionSpec.result_schema``); this file makes OpenAPI of them:

- every action is ``POST /v1/modules/{module}/{action}`` (operationId ``call_<module>_<action>``),
  plus the fixed routes of docs/api.md (operationIds named for what they do, snake_case);
- a result or params schema's models go to ``components/schemas`` under their names, and a
  result that is itself a named object (a ``TypedDict``) is moved there too, so a generator
  makes one class of ``TaskRecord`` however many routes return it;
- the fixed task routes take their result schemas from the ``tasks`` actions they run;
- every operation lists every status it can reply with (``openapi_parts``).

Caller identity is not an OpenAPI notion on a Unix socket (the kernel's peer credentials);
signed TCP requests are described as the headers they carry.
"""

from __future__ import annotations

import json
import re
import typing
from typing import Any

from pymgr.core.registry import ActionSpec, Registry
from pymgr.tasks import shapes
from pymgr.transport.http.openapi_parts import (
    A_CALL,
    AUDIT_QUERY,
    EVENTS_QUERY,
    JSON,
    LOG_QUERY,
    MODULES_QUERY,
    REF,
    SCHEMAS,
    SERVERS,
    TASK_ID,
    TASK_LIST_QUERY,
    errors_for,
    ok,
)

__all__ = ["describe"]


class _Components:
    """``components/schemas`` as the document is built: shared shapes by name.

    Two modules may each name a model ``Options`` with different fields: the second gets
    ``Options_2`` (and its refs are rewritten), so no schema's ref points at another's model.
    """

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {**SCHEMAS}

    def take(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``schema`` with its ``$defs`` moved here; a named object schema becomes a $ref to its copy here."""
        defs = schema.get("$defs", {})
        renames = {name: self._free_name(name, model) for name, model in defs.items()}
        if any(old != new for old, new in renames.items()):
            schema = _renamed(schema, renames)
        schema = dict(schema)
        for name, model in schema.pop("$defs", {}).items():
            self.schemas.setdefault(name, model)
        name = schema.get("title")
        if isinstance(name, str) and "properties" in schema and re.fullmatch(r"[A-Za-z0-9_]+", name):
            name = self._free_name(name, schema)
            self.schemas[name] = schema
            return {"$ref": REF.format(model=name)}
        return schema

    def _free_name(self, name: str, model: Any) -> str:
        """``name``, or ``name_N`` when ``name`` holds a different schema already."""
        found, n = name, 1
        while found in self.schemas and self.schemas[found] != model:
            n += 1
            found = f"{name}_{n}"
        return found


def _renamed(schema: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` and the refs to them renamed (a JSON round trip: refs are strings)."""
    text = json.dumps(schema)
    for old, new in renames.items():
        if old != new:
            text = text.replace(f'"{REF.format(model=old)}"', f'"{REF.format(model=new)}"')
    renamed: dict[str, Any] = json.loads(text)
    renamed["$defs"] = {renames[name]: model for name, model in renamed["$defs"].items()}
    return renamed


def _operation_id(spec: ActionSpec, taken: set[str]) -> str:
    """``call_<module>_<action>``, snake_case; a suffix keeps it unique (``a_b.c`` and ``a.b_c``)."""
    base = "call_" + re.sub(r"[^0-9a-z]+", "_", f"{spec.module}_{spec.name}".lower()).strip("_")
    found, n = base, 1
    while found in taken:
        n += 1
        found = f"{base}_{n}"
    taken.add(found)
    return found


def _action(spec: ActionSpec, components: _Components, taken: set[str]) -> dict[str, Any]:
    params = components.take(spec.params_model.model_json_schema(ref_template=REF))
    result = components.take(spec.result_schema(ref_template=REF))
    summary = spec.doc.split("\n")[0] if spec.doc else spec.qualname
    return {
        "operationId": _operation_id(spec, taken),
        "summary": summary,
        "description": spec.doc or summary,
        "tags": [spec.module],
        # No body is {}: required only when some param is.
        "requestBody": {"required": bool(params.get("required")), "content": {JSON: {"schema": params}}},
        "responses": {"200": ok(result, "The action's result"), **errors_for(*A_CALL, "409")},
        "x-pymgr-read-only": spec.options.read_only,
    }


def _route_results(registry: Registry, components: _Components) -> dict[str, dict[str, Any]]:
    """The result schemas of the actions the fixed routes run (``tasks.*``, ``audit.read``), by qualified
    name ({} for one this daemon does not serve)."""
    return {
        spec.qualname: components.take(spec.result_schema(ref_template=REF))
        for module in ("tasks", "audit")
        if module in registry
        for spec in registry.actions(module)
    }


def _get(
    operation_id: str, summary: str, response: dict[str, Any], *statuses: str, **extra: Any
) -> dict[str, Any]:
    operation = {"operationId": operation_id, "summary": summary, "tags": ["api"]}
    return {"get": {**operation, **extra, "responses": {"200": response, **errors_for(*statuses)}}}


#: One event as the SSE fields carry it (the shape OpenAPI 3.2 names ``itemSchema``; 3.1 tools read it per event).
_SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "Event.id: resume with Last-Event-ID"},
        "event": {"enum": list(typing.get_args(shapes.EventKind))},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": REF.format(model="Event") + "/properties/data"},
        },
    },
}


def _streams() -> dict[str, Any]:
    """The two routes that stream: a run's log (text as produced) and the events (SSE)."""
    log_headers = {
        name: {"description": text, "schema": {"type": "integer", "minimum": 0}}
        for name, text in (
            ("X-Pymgr-Log-Start", "The oldest logical offset still held"),
            ("X-Pymgr-Log-End", "The log's end when the reply started"),
        )
    }
    log_headers["X-Content-Type-Options"] = {
        "description": "Always nosniff: a browser shows the log as text, whatever it looks like",
        "schema": {"const": "nosniff"},
    }
    log = {
        "description": "The run's output from offset, as it is produced (chunked): the bytes the run wrote, "
        "labelled `text/plain; charset=utf-8`",
        "headers": log_headers,
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    events = {
        "description": "Server-sent events, each an Event of components/schemas as SSE fields: `id` (absent for "
        "a marker not in the history), `event` (the kind), `time` (epoch seconds; a field SSE parsers skip) and "
        "`data` (the event's data as JSON). Opens with a heartbeat and the matching runs' state; a heartbeat "
        "after [tasks] events_heartbeat_s without an event.",
        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
    }
    return {
        "/v1/tasks/{id}/logs": {
            **_get(
                "task_logs",
                "A run's output from a logical offset; follow=true streams until it ended",
                log,
                *A_CALL,
                parameters=LOG_QUERY,
            ),
            "parameters": [TASK_ID],
        },
        "/v1/events": _get(
            "events",
            "Task events as they happen, opening with the matching runs' state",
            events,
            *A_CALL,
            parameters=EVENTS_QUERY,
        ),
    }


def _task_writes(results: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """POST /v1/tasks and POST /v1/tasks/{id}/stop: tasks.start and tasks.stop under REST paths."""
    any_json: dict[str, Any] = {}
    start = {
        "operationId": "start_task",
        "summary": "Start a run of a task type (tasks.start); with a key, an active run holding it is returned",
        "tags": ["api"],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": REF.format(model="TaskStart")}}},
        },
        "responses": {
            "202": ok(results.get("tasks.start", any_json), "Accepted: the record"),
            **errors_for(*A_CALL, "409"),
        },
    }
    stop = {
        "operationId": "stop_task",
        "summary": "Stop a run (tasks.stop; a no-op for an ended one)",
        "tags": ["api"],
        "responses": {
            "202": ok(results.get("tasks.stop", any_json), "The record as it is now"),
            **errors_for(*A_CALL, "409"),
        },
    }
    return start, stop


def _task_routes(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    any_json: dict[str, Any] = {}
    start, stop = _task_writes(results)
    page = ok(results.get("tasks.list", any_json), "A page, newest first")
    page["headers"] = {
        "Link": {
            "description": 'The next page: <URL>; rel="next" (none when empty)',
            "schema": {"type": "string"},
        }
    }
    return {
        "/v1/task-types": _get(
            "list_task_types",
            "Task types that can be started",
            ok(results.get("tasks.types", any_json), "Every type"),
            *A_CALL,
        ),
        "/v1/task-counts": _get(
            "count_tasks",
            "How many runs there are in each state, over the whole history the store keeps (tasks.counts)",
            ok(results.get("tasks.counts", any_json), "A count for every state"),
            *A_CALL,
        ),
        "/v1/tasks": {
            **_get(
                "list_tasks",
                "Task records, newest first, a page at a time",
                page,
                *A_CALL,
                parameters=TASK_LIST_QUERY,
            ),
            "post": start,
        },
        "/v1/tasks/{id}": {
            **_get(
                "get_task", "One run's record", ok(results.get("tasks.show", any_json), "The record"), *A_CALL
            ),
            "parameters": [TASK_ID],
        },
        "/v1/tasks/{id}/stop": {"post": stop, "parameters": [TASK_ID]},
    }


def _fixed_routes(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    modules = ok({"type": "array", "items": {"$ref": REF.format(model="Module")}}, "Every module")
    text = {
        "description": "The Prometheus text format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    document = {
        "description": "OpenAPI 3.1, not in the envelope",
        "content": {JSON: {"schema": {"type": "object"}}},
    }
    return {
        "/v1/health": _get("health", "Liveness", ok({"$ref": REF.format(model="Health")}, "Alive")),
        "/v1/modules": _get(
            "list_modules",
            "Every module and action with their params, marked for the caller asking",
            modules,
            parameters=MODULES_QUERY,
        ),
        "/v1/openapi.json": _get("openapi", "This document", document),
        **_task_routes(results),
        **_streams(),
        "/v1/audit": _get(
            "read_audit",
            "The audit log's records, newest first, filtered, a page at a time (the audit.read action)",
            ok(results.get("audit.read", {}), "A page, newest first"),
            *A_CALL,
            parameters=AUDIT_QUERY,
        ),
        "/metrics": _get("metrics", "Counters and gauges (the metrics module's snapshot)", text, *A_CALL),
    }


def describe(registry: Registry, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this daemon's API, with the actions ``registry`` serves now."""
    components = _Components()
    paths = _fixed_routes(_route_results(registry, components))
    taken: set[str] = set()
    for module in registry.names():
        for spec in registry.actions(module):
            paths[f"/v1/modules/{spec.module}/{spec.name}"] = {"post": _action(spec, components, taken)}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pymgr",
            "version": version,
            "description": "A privileged task daemon's HTTP API; the reference is docs/api.md. On the Unix "
            "socket the caller is who the kernel says; on TCP every request is signed "
            "(docs/security.md, 'Signed requests').",
        },
        "servers": SERVERS,
        "paths": paths,
        "components": {
            "schemas": components.schemas,
            "securitySchemes": {
                "signed": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Pymgr-Signature",
                    "description": "HMAC-SHA256 of the canonical request, with X-Pymgr-Key, X-Pymgr-Timestamp and "
                    "X-Pymgr-Nonce (docs/security.md); TCP only",
                }
            },
        },
    }
