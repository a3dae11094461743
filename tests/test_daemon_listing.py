"""GET /v1/modules marked for the caller asking, end to end: the real daemon, its Unix socket, root and www-data.

The same listing through curl, the client (sync and async) and ``pymgr modules --allowed``;
``?allowed=true`` on both sides of the policy, a bad value, and the listing left out of the audit.
Without a policy (a dispatcher built without one) everything is allowed: tests/transport/http/test_http_app.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pymgr.client import AsyncClient, Client, ModuleInfo
from pymgr.core.registry import Registry
from pymgr.transport.http.openapi import describe
from tests.conftest import AS_WWW_DATA, PYMGR, Daemon, launch_daemon
from tests.test_daemon_security import needs_www_data

CONFIG = """
state_dir = "state"

[http]
unix_socket = "pymgr.sock"
socket_mode = "0666"
allow_world_writable = true

[[policy.rules]]
name = "root"
subjects = ["uid:0", "owner"]
# "*" reaches every action but the explicit ones (audit.read), which a rule must name.
actions = ["*", "audit.read"]

[[policy.rules]]
name = "web back end"
subjects = ["group:www-data"]
actions = ["demo.*", "tasks.read", "tasks.start:scan", "tasks.stop:scan", "tasks.logs:scan"]

[modules]
enabled = ["demo", "tasks"]

[tasks.types.echo]
argv = ["/bin/echo", "hi"]

[tasks.types.scan]
argv = ["/bin/true"]
"""
TYPED = ("tasks.start", "tasks.stop", "tasks.logs")


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    base = Path(tempfile.mkdtemp(prefix="pymgr-listing-"))
    base.chmod(0o755)  # www-data must reach the socket (pytest's tmp dirs are 0700)
    started = launch_daemon(base / "d", CONFIG)
    (base / "d").chmod(0o755)
    yield started
    started.stop()
    shutil.rmtree(base, ignore_errors=True)


def by_name(listing: list[ModuleInfo] | list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each action by its ``module.action`` name, as the API sends it (a JSON listing read by the client's type)."""
    modules = [m if isinstance(m, ModuleInfo) else ModuleInfo.from_json(m) for m in listing]
    return {f"{m.name}.{a.name}": a.to_json() for m in modules for a in m.actions}


def as_www_data(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "COLUMNS": "1000",
    }  # a table row on one line, whatever the terminal running the tests
    return subprocess.run([*AS_WWW_DATA, *argv], capture_output=True, text=True, timeout=60, cwd="/", env=env)


def get_as_www_data(daemon: Daemon, path: str) -> tuple[int, dict[str, Any]]:
    out = as_www_data(
        "curl", "-sS", "--unix-socket", str(daemon.socket), "-w", "\n%{http_code}", f"http://pymgr{path}"
    )
    text, _, status = out.stdout.rpartition("\n")
    return int(status), json.loads(text)


def audit_length(daemon: Daemon) -> int:
    return len((daemon.dir / "state" / "audit.log").read_text().splitlines())


def test_root_may_call_everything_and_allowed_true_lists_the_same(daemon: Daemon) -> None:
    with Client(socket=daemon.socket) as client:
        listing = client.modules()
        assert client.modules(allowed=True) == listing
    actions = by_name(listing)
    assert {"demo.echo", "demo.root_only", "tasks.list", *TYPED} <= actions.keys()
    assert all(a["allowed"] for a in actions.values())
    dangerous = {name for name, a in actions.items() if a["dangerous"]}
    assert {"demo.reboot", "tasks.stop"} <= dangerous and not {"demo.echo", "tasks.start"} & dangerous
    for typed in TYPED:
        assert actions[typed]["task_types"] == {"echo": True, "scan": True}


@needs_www_data
def test_www_data_sees_its_rule_in_the_marks(daemon: Daemon) -> None:
    status, body = get_as_www_data(daemon, "/v1/modules")
    assert status == 200
    actions = by_name(body["result"])
    assert actions["demo.echo"]["allowed"] and actions["tasks.list"]["allowed"]
    assert not actions["demo.root_only"]["allowed"]  # demo.* in the rule; its own allow=[uid:0] holds
    for typed in TYPED:
        assert actions[typed]["allowed"] and actions[typed]["task_types"] == {"echo": False, "scan": True}
    action_schema = {**describe_components(), "$ref": "#/components/schemas/Action"}
    for action in actions.values():
        jsonschema.validate(action, action_schema)


@needs_www_data
def test_allowed_true_lists_only_what_www_data_may_call(daemon: Daemon) -> None:
    status, body = get_as_www_data(daemon, "/v1/modules?allowed=true")
    assert status == 200
    actions = by_name(body["result"])
    assert "demo.root_only" not in actions and "demo.echo" in actions
    assert all(a["allowed"] for a in actions.values())
    for typed in TYPED:
        assert actions[typed]["task_types"] == {"scan": True}
    status, body = get_as_www_data(daemon, "/v1/modules?allowed=false")
    assert status == 200 and "demo.root_only" in by_name(body["result"])


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("allowed=yes", "allowed: must be true or false, not 'yes'"),
        ("allowed=", "allowed: must be true or false, not ''"),
        ("allowed=true&allowed=false", "allowed is given more than once"),
        ("allow=true", "unknown query parameter 'allow'; /v1/modules takes allowed=true|false"),
    ],
)
def test_a_bad_query_is_a_clear_400(daemon: Daemon, query: str, message: str) -> None:
    with Client(socket=daemon.socket) as client:
        reply = client._http.get(f"/v1/modules?{query}")
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "bad_params" and error["message"].startswith(message)


def test_listing_is_not_an_audited_call(daemon: Daemon) -> None:
    with Client(socket=daemon.socket) as client:
        client.call("demo", "echo")  # the audit log exists and has a line
        before = audit_length(daemon)
        client.modules()
        client.modules(allowed=True)
        client.call("demo", "echo")
    assert audit_length(daemon) == before + 1


async def test_the_async_client_lists_the_same(daemon: Daemon) -> None:
    async with AsyncClient(socket=daemon.socket) as client:
        assert by_name(await client.modules(allowed=True)) == by_name(await client.modules())


@needs_www_data
def test_the_client_as_www_data(daemon: Daemon) -> None:
    script = (
        "import json, sys; from pymgr.client import Client; c = Client(socket=sys.argv[1]); "
        "print(json.dumps([[m.to_json() for m in c.modules(allowed=a)] for a in (False, True)]))"
    )
    out = as_www_data(sys.executable, "-c", script, str(daemon.socket))
    assert out.returncode == 0, out.stderr
    every, allowed = (by_name(listing) for listing in json.loads(out.stdout))
    assert not every["demo.root_only"]["allowed"] and "demo.root_only" not in allowed
    assert allowed["tasks.start"]["task_types"] == {"scan": True}


@needs_www_data
def test_the_cli_marks_and_filters_for_www_data(daemon: Daemon) -> None:
    base = (str(PYMGR), "--socket", str(daemon.socket))
    table = as_www_data(*base, "modules")
    assert table.returncode == 0, table.stderr
    [root_only] = [line for line in table.stdout.splitlines() if "demo.root_only" in line]
    [start] = [line for line in table.stdout.splitlines() if "tasks.start" in line]
    assert "(not allowed)" in root_only and "tasks.start (types: scan)" in start
    out = as_www_data(*base, "modules", "--allowed", "--json")
    assert out.returncode == 0, out.stderr
    actions = by_name(json.loads(out.stdout))
    assert "demo.root_only" not in actions and all(a["allowed"] for a in actions.values())
    filtered = as_www_data(*base, "modules", "--allowed")
    assert "demo.root_only" not in filtered.stdout and "(not allowed)" not in filtered.stdout


def describe_components() -> dict[str, Any]:
    """The OpenAPI document's components, for a ``$ref`` into them."""
    return {"components": describe(Registry(), "0")["components"]}
