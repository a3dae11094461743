"""``GET /v1/tasks`` a page at a time over HTTP: the array body, the ``Link`` header, the 400s."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from pymgr.config import TasksConfig
from pymgr.core.dispatch import Dispatcher
from pymgr.core.registry import ModuleContext, Registry
from pymgr.modules.tasks import Tasks
from pymgr.tasks.manager import TaskManager
from pymgr.tasks.states import TaskState
from pymgr.transport.conncount import ConnectionCounter
from pymgr.transport.http.routes import HttpApp
from pymgr.transport.http.limits import HttpLimits
from pymgr.transport.http.server import HttpServer
from pymgr.transport.listeners import bind_unix
from tests.tasks.test_task_store import record


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    manager = TaskManager(TasksConfig.model_validate({"list_limit": 2, "list_max_limit": 3}), tmp_path)
    for n in range(5):
        manager._store.add(record("scan" if n % 2 else "backup", key="k é&", state=TaskState.FAILED))
    registry = Registry()
    registry.add(Tasks(ModuleContext(tasks=manager)))
    app = HttpApp(Dispatcher(registry), version="9.9")
    limits = {
        "limits": HttpLimits(8192, 8192, 5, 5),
        "counter": ConnectionCounter(100, 100),
        "max_body_bytes": 1000,
    }
    server = HttpServer(
        app, [bind_unix(tmp_path / "h.sock", 0o600)], **limits, keepalive_timeout_s=5, shutdown_timeout_s=1
    )
    await server.start()
    transport = httpx.AsyncHTTPTransport(uds=str(tmp_path / "h.sock"))
    async with httpx.AsyncClient(transport=transport, base_url="http://pymgr") as c:
        yield c
    await server.close()
    await manager.aclose()


async def test_the_link_header_walks_every_page(client: httpx.AsyncClient) -> None:
    pages, url = [], "/v1/tasks"
    while True:
        r = await client.get(url)
        assert r.status_code == 200
        pages.append([record["id"] for record in r.json()["result"]])
        if "next" not in r.links:
            break
        url = r.links["next"]["url"]
    assert pages == [[5, 4], [3, 2], [1], []]
    assert url == "/v1/tasks?before=1"


async def test_the_next_link_keeps_the_filters_and_the_limit(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/tasks", params={"type": "scan", "key": "k é&", "limit": 1})
    assert [record["id"] for record in r.json()["result"]] == [4]
    assert r.headers["link"] == '</v1/tasks?type=scan&key=k+%C3%A9%26&limit=1&before=4>; rel="next"'
    r = await client.get(r.links["next"]["url"])
    assert [record["id"] for record in r.json()["result"]] == [2]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", r"limit: Input should be greater than or equal to 1 \(got '0'\)"),
        (
            "limit=4",
            r"limit: at most 3 records a page \(\[tasks\] list_max_limit\), not 4; ask for the next page",
        ),
        (
            "limit=x",
            r"limit: Input should be a valid integer, unable to parse string as an integer \(got 'x'\)",
        ),
        ("before=abc", r"before: Input should be a valid integer, unable to parse string as an integer"),
        ("before=0", r"before: Input should be greater than or equal to 1 \(got '0'\)"),
    ],
)
async def test_a_bad_limit_or_cursor_is_a_400(client: httpx.AsyncClient, query: str, message: str) -> None:
    r = await client.get(f"/v1/tasks?{query}")
    assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_params")
    assert "link" not in r.headers
    assert re.match(rf"^bad params for tasks\.list: {message}", r.json()["error"]["message"])


async def test_limit_at_the_maximum_is_a_page(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/tasks?limit=3")
    assert [record["id"] for record in r.json()["result"]] == [5, 4, 3]
