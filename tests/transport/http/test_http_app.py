"""The HTTP app on the HTTP server in this process, over a real Unix socket: routes, envelopes, limits.

The whole daemon over its socket is covered in test_daemon_http.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from pymgr import Module, action
from pymgr.core.dispatch import Dispatcher
from pymgr.core.registry import Registry
from pymgr.transport.conncount import ConnectionCounter
from pymgr.transport.http.routes import HttpApp
from pymgr.transport.http.limits import HttpLimits
from pymgr.transport.http.server import HttpServer
from pymgr.transport.listeners import bind_tcp, bind_unix

LIMIT = 1000


class Echo(Module):
    """Echo things."""

    name = "echo"

    @action
    async def back(self, **params: Any) -> dict[str, Any]:
        return params

    @action
    async def boom(self) -> None:
        raise RuntimeError("kaput")


class FakeTasks(Module):
    """Records which task actions the REST routes reach."""

    name = "tasks"

    @action
    async def list(self, state: str | None = None, type: str | None = None, key: str | None = None) -> Any:
        return {"list": [state, type, key]}

    @action
    async def start(self, type: str, params: dict[str, Any] = {}, key: str | None = None) -> Any:  # noqa: B006
        return {"start": [type, params, key]}

    @action
    async def show(self, id: int) -> Any:
        return {"show": id}

    @action
    async def stop(self, id: int) -> Any:
        return {"stop": id}

    @action
    async def types(self) -> Any:
        return ["scan"]


@pytest.fixture
async def server(tmp_path: Path) -> Any:
    registry = Registry()
    registry.add(Echo())
    registry.add(FakeTasks())
    app = HttpApp(Dispatcher(registry), version="9.9")
    sockets = [bind_unix(tmp_path / "h.sock", 0o600), bind_tcp("127.0.0.1:0")]
    server = HttpServer(
        app,
        sockets,
        limits=HttpLimits(8192, 8192, 5, 5),
        counter=ConnectionCounter(100, 100),
        max_body_bytes=LIMIT,
        keepalive_timeout_s=5,
        shutdown_timeout_s=1,
    )
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def client(server: HttpServer) -> Any:
    transport = httpx.AsyncHTTPTransport(uds=server.sockets[0].getsockname())
    async with httpx.AsyncClient(transport=transport, base_url="http://pymgr") as c:
        yield c


async def test_health(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/health")
    assert r.status_code == 200
    result = r.json()["result"]
    assert result["status"] == "ok" and result["version"] == "9.9" and result["uptime_s"] >= 0


async def test_modules_lists_actions_with_schemas(client: httpx.AsyncClient) -> None:
    modules = (await client.get("/v1/modules")).json()["result"]
    echo = next(m for m in modules if m["name"] == "echo")
    assert echo["doc"] == "Echo things." and [a["name"] for a in echo["actions"]] == ["back", "boom"]


async def test_without_a_policy_every_action_is_allowed(client: httpx.AsyncClient) -> None:
    every = (await client.get("/v1/modules")).json()["result"]
    assert all(a["allowed"] and "task_types" not in a for m in every for a in m["actions"])
    assert (await client.get("/v1/modules?allowed=true")).json()["result"] == every
    r = await client.get("/v1/modules?allowed=maybe")
    assert (
        r.status_code == 400 and r.json()["error"]["message"] == "allowed: must be true or false, not 'maybe'"
    )


async def test_call_action(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/modules/echo/back", json={"a": 1})
    assert (r.status_code, r.json()) == (200, {"ok": True, "result": {"a": 1}})
    r = await client.post("/v1/modules/echo/back")  # empty body means no params
    assert r.json() == {"ok": True, "result": {}}


async def test_a_tcp_caller_reaches_the_app_without_peer_credentials(server: HttpServer) -> None:
    host, port = server.sockets[1].getsockname()[:2]
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as tcp:
        r = await tcp.post("/v1/modules/echo/back", json={"via": "tcp"})
    assert (r.status_code, r.json()["result"]) == (200, {"via": "tcp"})


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "message"),
    [
        (
            "POST",
            "/v1/modules/nope/x",
            b"{}",
            404,
            "not_found",
            r"^no module named 'nope'; modules: echo, tasks$",
        ),
        ("POST", "/v1/modules/echo/nope", b"{}", 404, "not_found", r"^module 'echo' has no action 'nope'"),
        (
            "POST",
            "/v1/modules/echo/back",
            b"{not json",
            400,
            "bad_params",
            r"^request body is not valid JSON: ",
        ),
        (
            "POST",
            "/v1/modules/echo/back",
            b"[1, 2]",
            400,
            "bad_params",
            r"^request body must be a JSON object, not list$",
        ),
        ("POST", "/v1/modules/echo/back", b"\xff\xfe", 400, "bad_params", r"^request body is not valid JSON"),
        (
            "POST",
            "/v1/modules/echo/boom",
            b"",
            500,
            "internal",
            r"^action echo\.boom failed: RuntimeError: kaput$",
        ),
        (
            "GET",
            "/v1/modules/echo/back",
            b"",
            405,
            "not_found",
            r"^GET /v1/modules/echo/back is not allowed; use POST$",
        ),
        ("POST", "/v1/health", b"", 405, "not_found", r"^POST /v1/health is not allowed; use GET$"),
        ("GET", "/", b"", 404, "not_found", r"^no route /; the API lives under /v1/"),
        ("GET", "/v1/nothing", b"", 404, "not_found", r"^no route /v1/nothing"),
        ("GET", "/v1/tasks/1/logs/x", b"", 404, "not_found", r"^no route /v1/tasks/1/logs/x; task routes"),
        (
            "GET",
            "/v1/tasks?bogus=1",
            b"",
            400,
            "bad_params",
            r"^unknown filter 'bogus'; filters: state, type, key, started_by$",
        ),
        ("GET", "/v1/tasks/abc", b"", 400, "bad_params", r"^bad params for tasks\.show: id: "),
    ],
)
async def test_errors_have_envelope_status_and_message(
    client: httpx.AsyncClient, method: str, path: str, body: bytes, status: int, code: str, message: str
) -> None:
    r = await client.request(method, path, content=body)
    assert r.status_code == status
    payload = r.json()
    assert payload["ok"] is False and payload["error"]["code"] == code
    assert re.match(message, payload["error"]["message"]), payload["error"]["message"]


async def test_body_limit_both_sides(client: httpx.AsyncClient) -> None:
    def body_of(size: int) -> bytes:
        return b'{"a":"' + b"x" * (size - 8) + b'"}'

    assert len(body_of(LIMIT)) == LIMIT
    assert (await client.post("/v1/modules/echo/back", content=body_of(LIMIT))).status_code == 200
    r = await client.post("/v1/modules/echo/back", content=body_of(LIMIT + 1))
    assert r.status_code == 413
    assert (
        r.json()["error"]["message"]
        == f"request body of {LIMIT + 1} bytes is larger than max_body_bytes={LIMIT}"
    )


async def test_chunked_body_over_limit_is_cut_off(client: httpx.AsyncClient) -> None:
    async def chunks() -> Any:
        for _ in range(5):
            yield b"x" * 300

    r = await client.post("/v1/modules/echo/back", content=chunks())
    assert r.status_code == 413
    assert r.json()["error"]["message"] == f"request body is larger than max_body_bytes={LIMIT}"


async def test_task_routes_map_to_task_actions(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/tasks", params={"state": "running", "type": "scan", "key": "k"})
    assert r.json()["result"] == {"list": ["running", "scan", "k"]}
    r = await client.post("/v1/tasks", json={"type": "scan", "params": {"task_id": 1}, "key": "scan:1"})
    assert (r.status_code, r.json()["result"]) == (202, {"start": ["scan", {"task_id": 1}, "scan:1"]})
    assert (await client.get("/v1/tasks/7")).json()["result"] == {"show": 7}
    r = await client.post("/v1/tasks/7/stop")
    assert (r.status_code, r.json()["result"]) == (202, {"stop": 7})
    assert (await client.get("/v1/task-types")).json()["result"] == ["scan"]
    r = await client.delete("/v1/tasks")
    assert (
        r.status_code == 405
        and r.json()["error"]["message"] == "DELETE /v1/tasks is not allowed; use POST or GET"
    )


async def test_head_is_get_without_the_body(client: httpx.AsyncClient) -> None:
    r = await client.head("/v1/health")
    assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0
    assert (await client.head("/v1/modules/echo/back")).status_code == 405  # a POST route stays POST-only
