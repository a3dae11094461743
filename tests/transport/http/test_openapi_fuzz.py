"""The schema-based fuzzer: schemathesis sends what the document allows (and what it does not) to a
real daemon, and every reply must match the document: no 5xx, a documented status, content type,
headers and body.

Rules:
- Every operation of the document is fuzzed, in both of schemathesis's modes (positive: data that fits
  the schemas; negative: data that does not, which must get a documented 4xx).
- Bounded: ``MAX_EXAMPLES`` a mode and operation (about a minute on 2 cores in all); a failure is
  reported for every operation before the test fails, so one run shows them all.
- Requests go over the Unix socket (httpx's ``uds``; schemathesis's own sender speaks TCP only).
  The two streaming routes are read to their first chunk and then dropped: an event stream never
  ends, a followed log not before its run does.
- The daemon's task types are short and its caps small, so that starts the fuzzer makes cost little.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import EXAMPLES, LEGACY_SECRET, Daemon, launch_daemon

#: Cases per operation and mode: enough to reach each schema's edges, few enough for make test.
MAX_EXAMPLES = 40
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: Routes whose 200 body streams (read to the first chunk only).
STREAMS = {"/v1/events", "/v1/tasks/{id}/logs"}

CONFIG = f"""
state_dir = "state"

[http]
unix_socket = "pymgr.sock"

[legacy]
enabled = true
host = "127.0.0.1"
port = 0
secret = "{LEGACY_SECRET}"

[security]
public_secrets = true

# The fuzzer sends as fast as it can: a rate limit would answer most of it 429 before any route ran.
[limits]
rate_per_s = 100000
rate_burst = 100000

[[policy.rules]]
name = "the fuzzer may do everything"
subjects = ["any"]
actions = ["*"]

[modules]
enabled = ["demo", "tasks", "SCAN_MODULE", "metrics"]

# A command's reply is its outcome (CommandResult): fuzzed like the other actions.
[commands.greet]
argv = ["/bin/echo", "{{word}}"]
params = {{ word = {{ type = "str", default = "hello" }} }}

[tasks]
stop_grace_s = 1
keeper_idle_exit_s = 1
max_active = 8
scan_max_task_ids = 4

[tasks.types.scan]
argv = ["{{python}}", "{EXAMPLES}/scan.py", "--task-id", "{{task_id}}", "--duration", "0.2"]
cwd = "{EXAMPLES}"

[tasks.types.scan.params]
task_id = {{ type = "int", min = 0 }}
"""


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = launch_daemon(tmp_path_factory.mktemp("fuzz") / "d", CONFIG)
    try:
        yield daemon
    finally:
        daemon.stop()


def _send(client: httpx.Client, case: Any) -> httpx.Response:
    """The case over the Unix socket; a streaming route's 200 read to its first chunk."""
    kwargs = case.as_transport_kwargs(base_url="http://localhost")
    request = client.build_request(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params"),
        headers=kwargs.get("headers"),
        json=kwargs.get("json"),
        content=kwargs.get("data"),
    )
    began = time.monotonic()
    reply = client.send(request, stream=True)
    try:
        if case.operation.path in STREAMS and reply.status_code == 200:
            body = next(reply.iter_raw(), b"")
        else:
            body = reply.read()
    finally:
        reply.close()
    response = httpx.Response(reply.status_code, headers=reply.headers, content=body, request=request)
    response.elapsed = timedelta(seconds=time.monotonic() - began)
    return response


def _fuzz(operation: Any, mode: GenerationMode, client: httpx.Client) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if case.operation.path == "/v1/modules/demo/sleep" and isinstance(case.body, dict):
            case.body["seconds"] = 0  # a slow action is not what is fuzzed here
        case.validate_response(_send(client, case), checks=CHECKS)

    run()


def test_every_reply_matches_the_document(fuzzed: Daemon) -> None:
    transport = httpx.HTTPTransport(uds=str(fuzzed.socket))
    with httpx.Client(transport=transport, base_url="http://localhost", timeout=30) as client:
        schema = schemathesis.openapi.from_dict(client.get("/v1/openapi.json").json())
        failures = []
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) > 20
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    _fuzz(operation, mode, client)
                except Unsatisfiable:  # no parameters and no body: nothing to make invalid
                    assert mode is GenerationMode.NEGATIVE, operation.label
                except (
                    Exception,
                    BaseExceptionGroup,
                ) as exc:  # every operation's failure, not the first one's
                    failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert failures == [], "\n\n".join(failures)


def test_the_fuzz_finds_a_reply_that_breaks_the_document(fuzzed: Daemon) -> None:
    """A document that says /v1/health replies a string: the same run must fail."""
    transport = httpx.HTTPTransport(uds=str(fuzzed.socket))
    with httpx.Client(transport=transport, base_url="http://localhost", timeout=30) as client:
        document = client.get("/v1/openapi.json").json()
        reply = document["paths"]["/v1/health"]["get"]["responses"]["200"]["content"]["application/json"]
        reply["schema"]["properties"]["result"] = {"type": "string"}
        schema = schemathesis.openapi.from_dict(document)
        [health] = [r.ok() for r in schema.get_all_operations() if r.ok().path == "/v1/health"]
        try:
            _fuzz(health, GenerationMode.POSITIVE, client)
        except BaseExceptionGroup as group:  # schemathesis's FailureGroup: every failure of the case
            assert "Response violates schema" in str(group)
        else:
            pytest.fail("the fuzzer passed a reply its document does not allow")


def test_a_method_the_document_has_no_operation_for_is_405_naming_the_ones_it_has(fuzzed: Daemon) -> None:
    """What the fuzzer does not send: every other method on every path of the document."""
    transport = httpx.HTTPTransport(uds=str(fuzzed.socket))
    with httpx.Client(transport=transport, base_url="http://localhost", timeout=30) as client:
        document = client.get("/v1/openapi.json").json()
        for path, item in document["paths"].items():
            documented = {method.upper() for method in item if method != "parameters"}
            allowed = documented | ({"HEAD"} if "GET" in documented else set())
            for method in sorted({"GET", "POST", "PUT", "DELETE", "PATCH"} - documented):
                reply = client.request(method, path.replace("{id}", "1"))
                assert reply.status_code == 405, (method, path, reply.text)
                assert set(reply.headers["allow"].split(", ")) == allowed, (method, path)
                assert reply.json()["error"]["code"] == "not_found"
