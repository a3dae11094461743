"""pymgr.client against a real HTTP server: a stub ASGI app on uvicorn.

The stub (``StubApp``) speaks the daemon's HTTP/JSON contract with canned
replies (every error code, and replies that are not pymgr's), on a Unix socket
and a loopback TCP port; tests/test_cli.py drives `pymgr` against it too."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import pytest
import uvicorn

from pymgr import errors
from pymgr.client import (
    SYSTEM_SOCKET,
    AsyncClient,
    BadReply,
    Client,
    ConnectionFailed,
    Health,
    default_socket,
)
from pymgr.core.registry import Module, Registry, action

#: Every error code of the contract: its HTTP status and the class a client raises.
ERROR_CODES = [
    ("bad_params", 400, errors.ParamsInvalid),
    ("unauthenticated", 401, errors.Unauthenticated),
    ("forbidden", 403, errors.Forbidden),
    ("not_found", 404, errors.NotFound),
    ("conflict", 409, errors.Conflict),
    ("too_large", 413, errors.TooLarge),
    ("rate_limited", 429, errors.RateLimited),
    ("internal", 500, errors.ActionFailed),
    ("unavailable", 503, errors.Unavailable),
]
STATUS_OF = {code: status for code, status, _ in ERROR_CODES}


class Mode(StrEnum):
    FAST = "fast"
    SLOW = "slow"


class StubDemo(Module):
    """Demo actions of the stub (the schemas are real: built by the registry)."""

    name = "demo"

    @action(read_only=True)
    async def echo(
        self,
        count: int,
        ratio: float = 1.0,
        flag: bool = False,
        items: list[int] | None = None,
        opts: dict[str, Any] | None = None,
        label: str = "",
        limit: int | None = None,
        mode: Mode = Mode.FAST,
        x: Any = None,
    ) -> Any:
        """Return the params exactly as received.

        The stub answers for it; this body never runs."""


REGISTRY = Registry()
REGISTRY.add(StubDemo())


SCAN_PARAMS = {
    "properties": {"task_id": {"type": "integer"}, "duration": {"type": "number"}},
    "required": ["task_id"],
}
TASK_TYPES = [{"name": "scan", "doc": "Scan hosts for vulnerabilities.\n\nLong.", "params": SCAN_PARAMS}]


def _record(id: int, type: str = "scan", key: str | None = None, **fields: Any) -> dict[str, Any]:
    """A task record in the daemon's shape (tasks/records.py ``to_dict``)."""
    return {
        "id": id,
        "type": type,
        "key": key,
        "params": {"task_id": 1},
        "argv": ["scan", "--task-id", "1"],
        "state": "running",
        "pid": 4242,
        "pid_start_time": 123456,
        "exit_code": None,
        "signal": None,
        "created_at": "2023-11-14T22:13:20.000+00:00",
        "started_at": "2023-11-14T22:13:21.000+00:00",
        "ended_at": None,
        "started_by": {"kind": "unix", "uid": 0, "user": "root"},
        "stopped_by": None,
        "cancel_source": None,
        "error": None,
        "attempt": 1,
        "retry_of": None,
        "not_before": None,
        "progress": None,
        "progress_message": None,
        "boot_id": None,
        "cgroup": None,
        "log_path": f"/var/lib/pymgr/logs/{id}.log",
        **fields,
    }


TASKS = [
    _record(
        12,
        key="scan:2",
        state="stopped",
        pid=4343,
        signal="SIGTERM",
        ended_at="2023-11-14T22:15:00.000+00:00",
        cancel_source="user",
    ),
    _record(11, key="scan:1", state="succeeded", exit_code=0, ended_at="2023-11-14T22:15:00.000+00:00"),
    _record(10, type="echo", state="running"),
]


#: Replies that are not pymgr's envelope, or not quite.
NOT_PYMGR: dict[str, tuple[int, Any, str]] = {
    "html": (200, b"<html>oops</html>", "text/html"),
    "envelope": (200, [1, 2], "application/json"),
    "error": (500, {"ok": False, "error": "boom"}, "application/json"),
    "teapot": (
        418,
        {"ok": False, "error": {"code": "teapot", "message": "short and stout"}},
        "application/json",
    ),
}


class StubApp:
    """A raw ASGI app with the daemon's routes and canned replies.

    Special actions: ``errors.<code>`` replies with that error, ``bad.<what>``
    with a reply that is not pymgr's, ``demo.text`` with a string, ``slow.sleep``
    after a pause. ``requests`` logs (method, raw path, query, JSON body or None)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.modules_forbidden = False
        self.text_result = "hello"

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        body = json.loads(raw) if raw else None
        path = scope["raw_path"].decode()
        query = dict(parse_qsl(scope["query_string"].decode()))
        self.requests.append((scope["method"], path, query, body))
        status, payload, content_type = await self.route(scope["method"], path, query, body)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any, str]:
        parts = [unquote(p) for p in path.split("/")[2:]]  # after "/v1/"
        if (method, parts) == ("GET", ["health"]):
            return ok({"status": "ok", "version": "0.1.0", "pid": os.getpid(), "uptime_s": 1.5})
        if (method, parts) == ("GET", ["modules"]):
            if self.modules_forbidden:
                return fail("forbidden", "user 'nobody' may not list modules")
            return ok(
                [
                    {**m, "actions": [{**a, "allowed": True} for a in m["actions"]]}
                    for m in REGISTRY.describe()
                ]
            )
        if (method, parts) == ("GET", ["task-types"]):
            return ok(TASK_TYPES)
        if parts[0] == "modules" and len(parts) == 3 and method == "POST":
            return await self.call(parts[1], parts[2], body)
        if parts[0] == "tasks":
            return self.tasks(method, parts[1:], query, body)
        return fail("not_found", f"no route {method} {path}")

    async def call(self, module: str, name: str, body: Any) -> tuple[int, Any, str]:
        if module == "errors":
            return fail(name, f"canned {name} error", details={"code": name})
        if module == "bad":
            return NOT_PYMGR[name]
        if (module, name) == ("slow", "sleep"):
            await asyncio.sleep(1.0)
            return ok(None)
        if (module, name) == ("demo", "text"):
            return ok(self.text_result)
        if (module, name) == ("demo", "echo"):
            return ok(body)
        return fail("not_found", f"no module named {module!r}; modules: demo", details={"module": module})

    def tasks(self, method: str, rest: list[str], query: dict[str, str], body: Any) -> tuple[int, Any, str]:
        if (method, rest) == ("GET", []):
            return ok([t for t in TASKS if all(t.get(k) == v for k, v in query.items())])
        if (method, rest) == ("POST", []):
            return ok(
                _record(
                    13,
                    type=body["type"],
                    key=body.get("key"),
                    params=body["params"],
                    state="queued",
                    pid=None,
                    started_at=None,
                ),
                status=202,
            )
        found = [t for t in TASKS if rest and str(t["id"]) == rest[0]]
        if not found:
            return fail("not_found", f"no task {rest[0]!r}", details={"id": rest[0]})
        if (method, rest[1:]) == ("POST", ["stop"]):
            return ok(
                {**found[0], "state": "stopped", "signal": "SIGTERM", "cancel_source": "user"}, status=202
            )
        return ok(found[0])


def ok(result: Any, status: int = 200) -> tuple[int, Any, str]:
    return status, {"ok": True, "result": result}, "application/json"


def fail(code: str, message: str, details: dict[str, Any] | None = None) -> tuple[int, Any, str]:
    error = {"code": code, "message": message, **({"details": details} if details else {})}
    return STATUS_OF.get(code, 500), {"ok": False, "error": error}, "application/json"


class StubServer:
    """The stub, served by uvicorn in a thread on a Unix socket and a TCP port."""

    def __init__(self, directory: Path) -> None:
        self.app = StubApp()
        self.socket = directory / "stub.sock"
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(str(self.socket))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{tcp.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", ws="none", loop="asyncio")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [unix, tcp]}, daemon=True)


@contextmanager
def serving_stub(directory: Path) -> Iterator[StubServer]:
    """A started StubServer with its socket in ``directory``; stopped on exit."""
    stub = StubServer(directory)
    stub.thread.start()
    deadline = time.monotonic() + 10
    while not stub.server.started:
        if time.monotonic() > deadline or not stub.thread.is_alive():
            raise RuntimeError("the stub server did not start within 10 s")
        time.sleep(0.01)
    try:
        yield stub
    finally:
        stub.server.should_exit = True
        stub.thread.join(timeout=10)


@pytest.fixture(scope="module")
def stub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StubServer]:
    with serving_stub(tmp_path_factory.mktemp("stub")) as server:
        yield server


@pytest.fixture
def stub(stub_server: StubServer) -> StubServer:
    """The module's stub server, with its request log and switches reset."""
    stub_server.app.reset()
    return stub_server


@pytest.fixture
def no_socket_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No $PYMGR_SOCKET and a working directory without ./var: the defaults apply."""
    monkeypatch.delenv("PYMGR_SOCKET", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refusing_socket(directory: Path) -> Path:
    """A socket file nobody listens on: connecting is refused."""
    path = directory / "dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    return path


def test_health_modules_and_task_types(stub: StubServer) -> None:
    with Client(socket=stub.socket) as client:
        assert client.health() == Health("ok", "0.1.0", os.getpid(), 1.5)
        [demo] = client.modules()
        assert demo.name == "demo" and demo.actions[0].params["required"] == ["count"]
        assert demo.actions[0].allowed and demo.actions[0].task_types is None
        assert [t.to_json() for t in client.task_types()] == TASK_TYPES


def test_modules_allowed_becomes_the_query(stub: StubServer) -> None:
    with Client(socket=stub.socket) as client:
        client.modules()
        client.modules(allowed=True)
    assert [r[1:3] for r in stub.app.requests] == [("/v1/modules", {}), ("/v1/modules", {"allowed": "true"})]


async def test_modules_allowed_becomes_the_query_async(stub: StubServer) -> None:
    async with AsyncClient(socket=stub.socket) as client:
        await client.modules(allowed=True)
        await client.modules(allowed=False)
    assert [r[1:3] for r in stub.app.requests] == [("/v1/modules", {"allowed": "true"}), ("/v1/modules", {})]


def test_socket_may_be_a_str_and_tcp_a_url(stub: StubServer) -> None:
    with Client(socket=str(stub.socket)) as by_socket, Client(url=stub.url) as by_url:
        assert by_socket.health().status == by_url.health().status == "ok"


def test_call_takes_keywords_a_params_dict_or_both(stub: StubServer) -> None:
    with Client(socket=stub.socket) as client:
        assert client.call("demo", "echo", count=1, label="x") == {"count": 1, "label": "x"}
        assert client.call("demo", "echo", {"count": 2}) == {"count": 2}
        expected = {"from": 1, "params": [2], "count": 3}
        assert client.call("demo", "echo", params={"from": 1, "params": [2]}, count=3) == expected
        # module and action are positional-only, so they can be parameter names too
        assert client.call("demo", "echo", module="m", action="a") == {"module": "m", "action": "a"}
        assert client.call("demo", "echo") == {}
    assert stub.app.requests[-1] == ("POST", "/v1/modules/demo/echo", {}, {})


def test_call_rejects_a_parameter_given_twice(stub: StubServer) -> None:
    expected = r"^call\(\) got parameter\(s\) count both in params and as keywords; pass each once$"
    with Client(socket=stub.socket) as client, pytest.raises(TypeError, match=expected):
        client.call("demo", "echo", {"count": 1}, count=2)
    assert stub.app.requests == []


def test_tasks_filters_become_the_query(stub: StubServer) -> None:
    with Client(socket=stub.socket) as client:
        assert [t.id for t in client.tasks()] == [12, 11, 10]
        assert [t.to_json() for t in client.tasks()] == TASKS
        assert [t.id for t in client.tasks(state="running", type="echo")] == [10]
        assert client.tasks(key="scan:9") == []
    assert [r[2] for r in stub.app.requests] == [
        {},
        {},
        {"state": "running", "type": "echo"},
        {"key": "scan:9"},
    ]


def test_tasks_paging_becomes_the_query(stub: StubServer) -> None:
    with Client(socket=stub.socket) as client:
        client.tasks(state="running", limit=2, before=41)
    assert stub.app.requests[-1][2] == {"state": "running", "limit": "2", "before": "41"}


def test_task_start_and_stop(stub: StubServer) -> None:
    with Client(socket=stub.socket) as client:
        assert client.task("11").state == "succeeded"
        started = client.start_task("scan", {"task_id": 7}, key="scan:7")
        assert (started.id, started.state, started.key) == (13, "queued", "scan:7")
        client.start_task("scan")
        assert client.stop_task(12).cancel_source == "user"
    posts = [r for r in stub.app.requests if r[0] == "POST"]
    assert posts == [
        ("POST", "/v1/tasks", {}, {"type": "scan", "params": {"task_id": 7}, "key": "scan:7"}),
        ("POST", "/v1/tasks", {}, {"type": "scan", "params": {}}),
        ("POST", "/v1/tasks/12/stop", {}, None),
    ]


def test_names_are_one_escaped_path_segment(stub: StubServer) -> None:
    with Client(socket=stub.socket) as client:
        with pytest.raises(errors.NotFound, match=r"^no task 'a/b\?c'$"):
            client.task("a/b?c")
        assert stub.app.requests[-1][1] == "/v1/tasks/a%2Fb%3Fc"
        for bad in ("", ".", ".."):
            with pytest.raises(
                ValueError, match=rf"^task id must be a non-empty name, not '{re.escape(bad)}'$"
            ):
                client.stop_task(bad)
        with pytest.raises(ValueError, match=r"^module must be a non-empty name, not '\.\.'$"):
            client.call("..", "echo")


@pytest.mark.parametrize(("code", "status", "cls"), ERROR_CODES)
def test_each_error_code_raises_its_class(stub: StubServer, code: str, status: int, cls: type) -> None:
    with Client(socket=stub.socket) as client, pytest.raises(cls, match=rf"^canned {code} error$") as info:
        client.call("errors", code)
    exc = info.value
    assert type(exc) is cls and not isinstance(exc, ConnectionFailed)
    assert (exc.code, exc.message, exc.details) == (code, f"canned {code} error", {"code": code})
    assert exc.http_status == status


@pytest.mark.parametrize(("code", "status", "cls"), ERROR_CODES)
async def test_each_error_code_raises_its_class_async(
    stub: StubServer, code: str, status: int, cls: type
) -> None:
    async with AsyncClient(socket=stub.socket) as client:
        with pytest.raises(cls, match=rf"^canned {code} error$") as info:
            await client.call("errors", code)
    assert (type(info.value), info.value.code, info.value.http_status) == (cls, code, status)


def test_an_unknown_code_keeps_its_code_and_status(stub: StubServer) -> None:
    with (
        Client(socket=stub.socket) as client,
        pytest.raises(errors.PymgrError, match=r"^short and stout$") as info,
    ):
        client.call("bad", "teapot")
    assert (type(info.value), info.value.code, info.value.http_status) == (errors.PymgrError, "teapot", 418)


@pytest.mark.parametrize(
    ("action", "status", "what"),
    [
        ("html", 200, r"a body that is not JSON: '<html>oops</html>'"),
        ("envelope", 200, r'JSON without a boolean "ok": \'\[1, 2\]\''),
        ("error", 500, r'an error reply without "error\.code" and "error\.message": .*'),
    ],
)
def test_a_reply_that_is_not_pymgr_json_raises_bad_reply(
    stub: StubServer, action: str, status: int, what: str
) -> None:
    with Client(socket=stub.socket) as client, pytest.raises(BadReply) as info:
        client.call("bad", action)
    pattern = rf"^the server at socket {re.escape(str(stub.socket))} sent HTTP {status} with {what}; "
    assert re.match(pattern + r"is it a pymgr daemon\? check --socket / --url$", info.value.message)
    assert info.value.details is not None and info.value.details["status"] == status


def failed_health(client: Client) -> ConnectionFailed:
    """The ConnectionFailed of ``client.health()``."""
    with client, pytest.raises(ConnectionFailed) as info:
        client.health()
    return info.value


def test_a_missing_socket_says_to_start_the_daemon(tmp_path: Path) -> None:
    path = tmp_path / "none.sock"
    failure = failed_health(Client(socket=path))
    assert re.match(
        rf"^cannot reach pymgr: no socket at {re.escape(str(path))}; is the daemon running\? "
        r"Start it with `pymgr serve --config FILE`, or pass --socket / set PYMGR_SOCKET$",
        failure.message,
    )
    assert isinstance(failure, errors.Unavailable) and failure.code == "unavailable"
    reason = f"[Errno {errno.ENOENT}] No such file or directory"
    assert failure.details == {"target": f"socket {path}", "reason": reason}


def test_a_refused_connection(tmp_path: Path) -> None:
    path = refusing_socket(tmp_path)
    failure = failed_health(Client(socket=path))
    assert failure.message == (
        f"cannot reach pymgr at socket {path}: connection refused (nothing is listening); "
        "is the daemon running? Start it with `pymgr serve --config FILE`"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root may connect whatever the socket's mode")
def test_a_socket_without_permission_says_so(tmp_path: Path) -> None:
    path = refusing_socket(tmp_path)
    path.chmod(0)
    failure = failed_health(Client(socket=path))
    assert failure.message == (
        f"cannot reach pymgr at socket {path}: permission denied; the socket is mode 0660 by default: "
        f"run as its owner or a member of its group (see `ls -l {path}`)"
    )


async def test_a_refused_connection_async(tmp_path: Path) -> None:
    path = refusing_socket(tmp_path)
    async with AsyncClient(socket=path) as client:
        with pytest.raises(
            ConnectionFailed, match=r"^cannot reach pymgr at socket .*: connection refused \(nothing"
        ):
            await client.health()


def test_a_refused_tcp_connection(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound, never listening: the port refuses
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with (
            Client(url=url) as client,
            pytest.raises(ConnectionFailed, match=rf"^cannot reach pymgr at URL {url}: "),
        ):
            client.health()


def test_a_slow_reply_times_out_and_says_so(stub: StubServer) -> None:
    expected = (
        r"^pymgr at socket .* did not answer within 0\.2 s \(timeout_s\); it may be overloaded or stuck$"
    )
    with Client(socket=stub.socket, timeout_s=0.2) as client, pytest.raises(ConnectionFailed, match=expected):
        client.call("slow", "sleep")


async def test_a_closed_client_cannot_send(stub: StubServer) -> None:
    with Client(socket=stub.socket) as client:
        client.health()
    with pytest.raises(RuntimeError):
        client.health()
    async_client = AsyncClient(url=stub.url)  # closed without a context manager
    assert (await async_client.health()).status == "ok"
    await async_client.close()
    with pytest.raises(RuntimeError):
        await async_client.health()


async def test_async_client_covers_the_api(stub: StubServer) -> None:
    async with AsyncClient(socket=stub.socket) as client:
        assert (await client.health()).status == "ok"
        assert (await client.call("demo", "echo", params={"class": 1}, count=2)) == {"class": 1, "count": 2}
        assert [t.id for t in await client.tasks(state="stopped")] == [12]
        assert (await client.task(10)).type == "echo"
        assert (await client.start_task("scan", {"task_id": 1})).state == "queued"
        assert (await client.stop_task(11)).state == "stopped"
        assert (await client.task_types())[0].name == "scan"
        assert (await client.modules())[0].name == "demo"


def test_socket_env_is_honoured(
    stub: StubServer, no_socket_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYMGR_SOCKET", str(stub.socket))
    assert default_socket() == stub.socket
    with Client() as client:
        assert client.health().status == "ok"
    assert repr(client) == f"Client(socket={str(stub.socket)!r})"


def test_default_socket_order(no_socket_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_socket() == SYSTEM_SOCKET == Path("/run/pymgr/pymgr.sock")
    monkeypatch.setenv("PYMGR_SOCKET", "")  # empty counts as unset
    assert default_socket() == SYSTEM_SOCKET
    (no_socket_env / "var").mkdir()
    (no_socket_env / "var" / "pymgr.sock").touch()
    assert default_socket() == no_socket_env / "var" / "pymgr.sock"
    monkeypatch.setenv("PYMGR_SOCKET", "/elsewhere.sock")
    assert default_socket() == Path("/elsewhere.sock")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"socket": "/a.sock", "url": "http://h:1"},
            r"^pass either socket or url, not both \(socket='/a\.sock', url='http://h:1'\)$",
        ),
        ({"url": "ftp://h"}, r"^url must start with http:// or https://, not 'ftp://h'$"),
        ({"url": "h:1"}, r"^url must start with http:// or https://, not 'h:1'$"),
        ({"timeout_s": 0}, r"^timeout_s must be positive, not 0$"),
        ({"timeout_s": -1.0}, r"^timeout_s must be positive, not -1\.0$"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Client(**kwargs)


def test_smallest_timeout_is_accepted(tmp_path: Path) -> None:
    with Client(socket=tmp_path / "x.sock", timeout_s=0.001) as client:
        assert repr(client) == f"Client(socket={str(tmp_path / 'x.sock')!r})"
