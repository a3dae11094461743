"""GET /v1/openapi.json: a valid OpenAPI 3.1 document with every action the daemon serves, and the fixed routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from openapi_spec_validator import validate
from pydantic import BaseModel

from pymgr.core.registry import Module, ModuleContext, Registry, action
from pymgr.modules.demo import Demo
from pymgr.modules.tasks import Tasks
from pymgr.transport.http.openapi import describe
from tests.conftest import BASE_CONFIG, Daemon


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
            assert operation["operationId"] == spec.qualname
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
