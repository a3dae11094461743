"""GET /v1/openapi.json: a valid OpenAPI 3.1 document with every action the daemon serves, and the fixed routes."""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
from openapi_spec_validator import validate
from pydantic import BaseModel

from pymgr import errors
from pymgr.core.registry import Module, ModuleContext, Registry, action
from pymgr.modules.commands import command_modules
from pymgr.modules.commandspec import CommandConfig
from pymgr.modules.demo import Demo
from pymgr.modules.metrics import MetricsModule
from pymgr.modules.scan import Scan
from pymgr.modules.tasks import Tasks
from pymgr.tasks import shapes
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TaskState
from pymgr.transport.http.openapi import describe
from tests.conftest import BASE_CONFIG, Daemon

_RECORD_FIELDS: dict[str, Any] = {
    "id": 1,
    "type": "scan",
    "key": None,
    "params": {},
    "argv": ["true"],
    "state": TaskState.QUEUED,
    "started_by": {"transport": "internal"},
    "created_at": datetime.now(timezone.utc),
    "log_path": "/dev/null",
    "marker": "m",
}


def registry() -> Registry:
    reg = Registry()
    reg.add(Demo(ModuleContext()))
    reg.add(Tasks(ModuleContext()))
    return reg


def test_the_document_is_valid_openapi_3_1_with_every_action() -> None:
    reg = registry()
    doc = describe(reg, "9.9")
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    assert (doc["openapi"], doc["info"]["version"]) == ("3.1.0", "9.9")
    for module in reg.names():
        for spec in reg.actions(module):
            operation = doc["paths"][f"/v1/modules/{module}/{spec.name}"]["post"]
            assert operation["operationId"] == f"call_{module.lower()}_{spec.name}"
            assert operation["x-pymgr-read-only"] == spec.options.read_only
    start = doc["paths"]["/v1/modules/tasks/start"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert start["required"] == ["type"] and "$defs" not in start  # models it names live in components
    for route in (
        "/v1/health",
        "/v1/tasks",
        "/v1/tasks/{id}",
        "/v1/tasks/{id}/stop",
        "/v1/tasks/{id}/logs",
        "/v1/events",
        "/v1/task-types",
        "/v1/task-counts",
        "/v1/openapi.json",
        "/metrics",
    ):
        assert route in doc["paths"], route


class Port(BaseModel):
    number: int
    proto: str = "tcp"


class Firewall(Module):
    name = "firewall"

    @action
    async def open(self, port: Port, note: str = "") -> dict[str, Any]:
        """Open a port."""
        return {}


def test_a_schema_that_refers_to_models_keeps_them_in_components() -> None:
    reg = registry()
    reg.add(Firewall(ModuleContext()))
    doc = describe(reg, "1")
    validate(doc)
    body = doc["paths"]["/v1/modules/firewall/open"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert body["properties"]["port"] == {"$ref": "#/components/schemas/Port"}
    assert doc["components"]["schemas"]["Port"]["required"] == ["number"]


def test_the_daemon_serves_it_raw_not_in_the_envelope(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(BASE_CONFIG)
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://pymgr") as c:
        reply = c.get("/v1/openapi.json")
        head = c.head("/v1/openapi.json")
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    doc = reply.json()
    validate(doc)
    assert "/v1/modules/SCAN_MODULE/start" in doc["paths"] and "ok" not in doc
    assert head.status_code == 200 and head.content == b""


def test_the_module_list_describes_allowed_and_task_types() -> None:
    doc = describe(registry(), "9.9")
    validate(doc)
    listing = doc["paths"]["/v1/modules"]["get"]
    [param] = listing["parameters"]
    assert (param["name"], param["in"], param["schema"]["type"]) == ("allowed", "query", "boolean")
    assert "400" in listing["responses"]
    items = listing["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["result"][
        "items"
    ]
    assert items == {"$ref": "#/components/schemas/Module"}
    action = doc["components"]["schemas"]["Action"]
    assert "allowed" in action["required"] and action["properties"]["task_types"]["additionalProperties"] == {
        "type": "boolean"
    }


def _walk(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every JSON object in the document, with where it is (a/b/0/c)."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from _walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{where}/{index}")


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _problems(doc: dict[str, Any]) -> list[str]:
    """What makes a document incomplete: an operation without an id, summary or responses; a
    duplicate id; an array without items; a $ref that resolves to nothing."""
    problems, ids = [], []
    for path, item in doc["paths"].items():
        for method in ("get", "post", "put", "delete", "patch"):
            operation = item.get(method)
            if operation is None:
                continue
            ids.append(operation.get("operationId"))
            for needed in ("operationId", "summary", "responses"):
                if not operation.get(needed):
                    problems.append(f"{method} {path}: no {needed}")
    problems += [f"operationId {i!r} twice or missing" for i in set(ids) if ids.count(i) > 1 or not i]
    for where, node in _walk(doc, "#"):
        if node.get("type") == "array" or "array" in (node.get("type") or []):
            if "items" not in node and "prefixItems" not in node:
                problems.append(f"{where}: an array without items")
        ref = node.get("$ref")
        if isinstance(ref, str):
            try:
                _resolve(doc, ref)
            except (KeyError, IndexError, TypeError):
                problems.append(f"{where}: $ref {ref} resolves to nothing")
    return problems


def test_the_walk_finds_what_it_looks_for() -> None:
    broken = {
        "paths": {"/a": {"get": {"summary": "s", "responses": {"200": {}}}}},
        "components": {"schemas": {"A": {"type": "array"}, "B": {"$ref": "#/components/schemas/C"}}},
    }
    assert sorted(_problems(broken)) == [
        "#/components/schemas/A: an array without items",
        "#/components/schemas/B: $ref #/components/schemas/C resolves to nothing",
        "get /a: no operationId",
        "operationId None twice or missing",
    ]


def test_every_operation_is_complete_and_every_ref_resolves() -> None:
    reg = registry()
    reg.add(Firewall(ModuleContext()))
    doc = describe(reg, "1")
    validate(doc)
    assert _problems(doc) == []
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            assert {"400", "401", "408", "413", "429", "500", "503"} <= set(responses), (method, path)
            assert "Retry-After" in responses["429"]["headers"], (method, path)
            assert re.fullmatch(r"[a-z][a-z0-9_]*", operation["operationId"]), operation["operationId"]


def test_each_action_result_schema_comes_from_its_return_annotation() -> None:
    doc = describe(registry(), "1")
    schemas = doc["components"]["schemas"]

    def result(path: str, method: str = "post", status: str = "200") -> Any:
        reply = doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        return reply["properties"]["result"]

    record = {"$ref": "#/components/schemas/TaskRecord"}
    assert result("/v1/modules/tasks/show") == record == result("/v1/tasks/{id}", "get")
    assert result("/v1/tasks", "post", "202") == record == result("/v1/tasks/{id}/stop", "post", "202")
    assert (
        result("/v1/modules/tasks/list") == {"type": "array", "items": record} == result("/v1/tasks", "get")
    )
    assert result("/v1/modules/tasks/events")["items"] == {"$ref": "#/components/schemas/Event"}
    assert result("/v1/modules/demo/sleep") == {"type": "object", "additionalProperties": {"type": "number"}}
    assert result("/v1/modules/demo/root_only") == {"type": "string"}
    # Every field the daemon sends, each required (null where it may be), the state an enum.
    shown = TaskRecord(**_RECORD_FIELDS).to_dict()
    assert sorted(schemas["TaskRecord"]["required"]) == sorted(shown)
    assert set(schemas["TaskRecord"]["properties"]["state"]["enum"]) == {s.value for s in TaskState}
    assert set(typing.get_args(shapes.StateName)) == {s.value for s in TaskState}
    assert sorted(schemas["Event"]["required"]) == ["data", "id", "kind", "time"]


def test_the_error_codes_are_every_code_an_error_class_owns() -> None:
    doc = describe(registry(), "1")
    codes = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    owned = {cls.code for cls in _subclasses(errors.PymgrError)}
    assert owned <= set(codes) and "bad_params" in codes and "rate_limited" in codes


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_built_in_and_demo_action_has_a_return_annotation() -> None:
    reg = registry()
    reg.add(MetricsModule(ModuleContext()))
    reg.add(Scan(ModuleContext()))
    for module in command_modules({"uptime": CommandConfig(argv=["/usr/bin/uptime"])}):
        reg.add(module)
    unannotated = [s.qualname for m in reg.names() for s in reg.actions(m) if s.result_schema() == {}]
    assert unannotated == []
    command = reg.get("commands", "uptime").result_schema()
    assert command["title"] == "CommandResult" and "exit_code" in command["required"]


def test_an_action_without_a_return_annotation_has_an_open_result_schema() -> None:
    class Loose(Module):
        name = "loose"

        @action
        async def anything(self):  # type: ignore[no-untyped-def]
            return 1

    reg = Registry()
    reg.add(Loose(ModuleContext()))
    doc = describe(reg, "1")
    reply = doc["paths"]["/v1/modules/loose/anything"]["post"]["responses"]["200"]["content"]
    assert reply["application/json"]["schema"]["properties"]["result"] == {}


def test_the_servers_explain_the_unix_socket_and_tcp() -> None:
    servers = describe(registry(), "1")["servers"]
    assert servers[0]["url"] == "http://localhost" and "--unix-socket" in servers[0]["description"]
    assert servers[1]["url"] == "http://{host}:{port}" and "signed" in servers[1]["description"]


def _other_port() -> type[BaseModel]:
    class Port(BaseModel):
        """Another module's ``Port``: the same name, other fields."""

        name: str

    return Port


OtherPort = _other_port()


class Proxy(Module):
    name = "proxy"

    @action
    async def forward(self, port: OtherPort) -> OtherPort:
        """Forward a named port."""
        return port


def test_two_models_of_one_name_keep_their_own_schemas() -> None:
    reg = registry()
    reg.add(Firewall(ModuleContext()))
    reg.add(Proxy(ModuleContext()))
    doc = describe(reg, "1")
    validate(doc)
    assert _problems(doc) == []
    schemas = doc["components"]["schemas"]
    firewall = doc["paths"]["/v1/modules/firewall/open"]["post"]["requestBody"]["content"]["application/json"]
    proxy = doc["paths"]["/v1/modules/proxy/forward"]["post"]
    proxy_body = proxy["requestBody"]["content"]["application/json"]["schema"]
    proxy_result = proxy["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["result"]
    assert firewall["schema"]["properties"]["port"] == {"$ref": "#/components/schemas/Port"}
    assert proxy_body["properties"]["port"] == {"$ref": "#/components/schemas/Port_2"}
    assert schemas["Port"]["required"] == ["number"] and schemas["Port_2"]["required"] == ["name"]
    assert proxy_result == {"$ref": "#/components/schemas/Port_2"}


def test_tasks_events_takes_the_streams_filters_with_the_same_bounds() -> None:
    doc = describe(registry(), "9.9")
    body = doc["paths"]["/v1/modules/tasks/events"]["post"]["requestBody"]["content"]["application/json"]
    taken = body["schema"]["properties"]
    streamed = {
        p["name"]: p["schema"] for p in doc["paths"]["/v1/events"]["get"]["parameters"] if p["in"] == "query"
    }
    assert set(streamed) <= set(taken)
    for name, schema in streamed.items():
        [given] = [s for s in taken[name]["anyOf"] if s.get("type") != "null"]
        assert {k: given[k] for k in schema} == schema, name  # the stream's bounds are the action's
