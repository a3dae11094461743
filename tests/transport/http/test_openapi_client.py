"""A client generated from a running daemon's document by a standard generator calls that daemon.

openapi-python-client (the test extra) reads ``GET /v1/openapi.json`` into a package in a tmp dir;
the test imports it and drives the daemon through it over the Unix socket (httpx's ``uds``
transport, as the document's first server says): health, a demo action, start a task, read it,
list tasks, and an error reply parsed as the error envelope. A document the generator cannot
read, or a reply that does not fit the generated models, fails here.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.conftest import BASE_CONFIG, Daemon

#: The package name the client is generated as (removed from sys.modules afterwards).
PACKAGE = "pymgr_generated_client"


@pytest.fixture
def generated(start_daemon: Callable[..., Daemon], tmp_path: Path) -> Iterator[tuple[Daemon, ModuleType]]:
    daemon = start_daemon(BASE_CONFIG)
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://localhost"
    ) as c:
        (tmp_path / "openapi.json").write_bytes(c.get("/v1/openapi.json").content)
    # No post hooks: the generator would run ruff from PATH on its output, which changes nothing it imports.
    (tmp_path / "generator.yaml").write_text("post_hooks: []\n")
    generator = Path(sys.executable).parent / "openapi-python-client"
    done = subprocess.run(
        [str(generator), "generate", "--path", "openapi.json", "--config", "generator.yaml"]
        + ["--meta", "none", "--output-path", str(tmp_path / "out" / PACKAGE)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(tmp_path / "out"))
    try:
        yield daemon, importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path / "out"))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _api(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.api.{name}")


def test_the_generated_client_drives_the_daemon(generated: tuple[Daemon, ModuleType]) -> None:
    daemon, package = generated
    models = importlib.import_module(f"{PACKAGE}.models")
    transport = httpx.HTTPTransport(uds=str(daemon.socket))
    client = package.Client(
        base_url="http://localhost", httpx_args={"transport": transport}, raise_on_unexpected_status=True
    )
    with client:
        health = _api(package, "api.health").sync(client=client)
        assert health.ok is True and health.result.status == "ok" and health.result.pid > 0

        body = models.CallDemoSleepDemoSleep.from_dict({"seconds": 0})
        slept = _api(package, "demo.call_demo_sleep").sync(client=client, body=body)
        assert slept.result.to_dict() == {"slept_s": 0}

        start = models.TaskStart.from_dict(
            {"type": "scan", "params": {"task_id": 1, "duration": 0}, "key": "openapi:1"}
        )
        started = _api(package, "api.start_task").sync(client=client, body=start)
        assert not isinstance(started, models.Error), started.to_dict()
        record = started.result
        assert isinstance(record, models.TaskRecord) and record.type_ == "scan" and record.key == "openapi:1"
        assert record.state in {models.TaskRecordState.QUEUED, models.TaskRecordState.RUNNING}

        shown = _api(package, "api.get_task").sync(record.id, client=client).result
        assert shown.id == record.id and shown.started_by.transport == "unix"

        page = _api(package, "api.list_tasks").sync(client=client, type_="scan", limit=10).result
        assert [r.id for r in page] == [record.id]

        missing = _api(package, "api.get_task").sync(2**62, client=client)
        assert isinstance(missing, models.Error) and missing.error.code == models.ErrorErrorCode.NOT_FOUND
