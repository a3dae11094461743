"""The typed client's result types and the OpenAPI document describe the same replies.

The client reads replies by hand (it must not import pydantic, so it cannot read
the daemon's own shapes); the document comes from those shapes. This holds the
two to the same fields, so a field the daemon adds or renames fails here and not
in a user's web app.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pymgr.client import results
from pymgr.transport.http.openapi import describe
from tests.transport.http.test_openapi import registry

#: Client type -> the document's schema of the same reply.
PAIRS = [
    (results.TaskRecord, "TaskRecord"),
    (results.Health, "Health"),
    (results.ModuleInfo, "Module"),
    (results.ActionInfo, "Action"),
    (results.TaskTypeInfo, "TaskType"),
    (results.TaskCounts, "TaskCounts"),
    (results.Event, "Event"),
]


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    return describe(registry(), "1")["components"]["schemas"]


@pytest.mark.parametrize(("cls", "name"), PAIRS, ids=[name for _, name in PAIRS])
def test_the_client_reads_every_field_the_document_names(
    cls: type, name: str, schemas: dict[str, Any]
) -> None:
    schema = schemas[name]
    fields = {field.name for field in dataclasses.fields(cls)}
    assert set(schema["properties"]) == fields


@pytest.mark.parametrize(("cls", "name"), PAIRS, ids=[name for _, name in PAIRS])
def test_what_the_document_requires_the_client_requires(
    cls: type, name: str, schemas: dict[str, Any]
) -> None:
    """A field the daemon always sends has no default in the client (a missing one is a BadReply)."""
    optional = {
        field.name
        for field in dataclasses.fields(cls)
        if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    }
    assert not optional & set(schemas[name].get("required", []))
