"""Delegation and the audit read endpoint, end to end: a real daemon, its Unix socket, its audit files.

The test process is the delegate (its own uid, namespace ``console``); the people it acts for are
judged by their own rules, never by the delegate's ``*``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from pymgr.client import Client
from pymgr.errors import ParamsInvalid
from tests.conftest import Daemon, unix_http
from tests.test_daemon_security import SECURE_CONFIG, signed, wait_refused

UID = os.getuid()
ME = f"uid:{UID}"

CONFIG = f"""
state_dir = "state"

[http]
unix_socket = "pymgr.sock"

[modules]
enabled = ["demo", "tasks"]

[audit]
# Small files: a handful of calls rotate them, so reading pages across rotations.
max_bytes = 4096
backups = 50

[tasks.types.echo]
argv = ["/bin/echo", "{{word}}"]

[tasks.types.echo.params]
word = {{ type = "str" }}

[[policy.delegates]]
subject = "{ME}"
namespace = "console"
roles = ["operators", "auditors"]

[[policy.rules]]
name = "the delegate itself"
subjects = ["{ME}"]
actions = ["*"]

[[policy.rules]]
name = "alice"
subjects = ["console:alice"]
actions = ["demo.echo", "demo.whoami"]

[[policy.rules]]
name = "operators"
subjects = ["role:operators"]
actions = ["tasks.read", "tasks.start:echo"]

[[policy.rules]]
name = "auditors"
subjects = ["role:auditors"]
actions = ["audit.read"]
"""


@pytest.fixture
def console(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon(CONFIG)


def as_person(
    daemon: Daemon, path: str, name: str | bytes, roles: str = "", body: Any = None, method: str = "POST"
) -> httpx.Response:
    headers = {"x-pymgr-on-behalf-of": name.encode() if isinstance(name, str) else name}
    if roles:
        headers["x-pymgr-roles"] = roles.encode()
    with unix_http(daemon) as http:
        return http.request(method, path, json=body if method == "POST" else None, headers=headers)


def audit_lines(daemon: Daemon) -> list[dict[str, Any]]:
    state = daemon.dir / "state"
    files = sorted(state.glob("audit.log*"), key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    return [json.loads(line) for path in reversed(files) for line in path.read_text().splitlines()]


def test_a_delegate_acts_for_a_person_and_the_audit_line_names_both(console: Daemon) -> None:
    reply = as_person(console, "/v1/modules/demo/whoami", "alice")
    assert reply.status_code == 200, reply.text
    me = reply.json()["result"]
    assert (me["person"], me["roles"], me["uid"], me["transport"]) == ("console:alice", [], UID, "unix")
    assert (
        as_person(console, "/v1/modules/demo/echo", "alice", body={"marker": "for-alice"}).status_code == 200
    )
    line = next(line for line in audit_lines(console) if line.get("params") == {"marker": "for-alice"})
    assert line["identity"]["person"] == "console:alice" and line["identity"]["uid"] == UID
    assert line["identity"]["roles"] == [] and line["operation"] == "demo.echo"


def test_the_delegate_calls_only_for_a_person_unless_its_entry_says_own_calls(
    console: Daemon, start_daemon: Callable[..., Daemon]
) -> None:
    # "the delegate itself" grants it "*": own_calls = false (the default) still refuses its own calls.
    with unix_http(console) as http:
        assert http.get("/v1/health").status_code == 200  # outside the policy: a console may watch the daemon
        reply = http.post("/v1/modules/demo/whoami", json={})
    assert reply.status_code == 403, reply.text
    assert re.fullmatch(
        r"(user:\S+|uid:\d+) \(uid \d+\) is a delegate \(\[\[policy.delegates\]\], namespace 'console'\) and "
        r"calls only for a person: send X-Pymgr-On-Behalf-Of, or set own_calls = true on its entry to let it "
        r"call as itself",
        reply.json()["error"]["message"],
    )
    wait_refused(console, ME, "forbidden", "demo.whoami", 1)
    console.stop()
    roles = 'roles = ["operators", "auditors"]'
    own = start_daemon(CONFIG.replace(roles, roles + "\nown_calls = true"))
    with unix_http(own) as http:
        assert http.post("/v1/modules/demo/whoami", json={}).status_code == 200


def test_the_person_gets_its_own_rules_never_the_delegates(console: Daemon) -> None:
    reply = as_person(console, "/v1/modules/demo/root_only", "alice")
    assert reply.status_code == 403
    assert reply.json()["error"]["message"].startswith(
        f"the policy allows console:alice (through the delegate uid:{UID}"
    ) or reply.json()["error"]["message"].startswith(
        "the policy allows console:alice (through the delegate user:"
    )
    # "root" is console:root: not user:root, uid:0 or the delegate's "*".
    reply = as_person(console, "/v1/modules/demo/echo", "root", body={})
    assert reply.status_code == 403 and "console:root" in reply.json()["error"]["message"]
    # The listing answers for the person too.
    reply = as_person(console, "/v1/modules?allowed=true", "alice", method="GET")
    listed = {(m["name"], a["name"]) for m in reply.json()["result"] for a in m["actions"]}
    assert listed == {("demo", "echo"), ("demo", "whoami")}
    wait_refused(console, ME, "forbidden", "demo.root_only", 1)
    wait_refused(console, ME, "forbidden", "demo.echo", 1)
    # Counted under the delegate (its rate and source), and naming the person it asked for.
    refused = (console.dir / "state" / "audit-refused.log").read_text().splitlines()
    persons = [json.loads(line).get("persons", {}) for line in refused]
    assert (
        sum(p.get("console:alice", 0) for p in persons) >= 1
        and sum(p.get("console:root", 0) for p in persons) >= 1
    )


@pytest.mark.parametrize(
    ("name", "roles", "status", "message"),
    [
        ("user:root", "", 400, r"^X-Pymgr-On-Behalf-Of 'user:root' is not a person's name"),
        ("../root", "", 400, r"^X-Pymgr-On-Behalf-Of '\.\./root' is not a person's name"),
        ("a" * 65, "", 400, r"is 65 characters, more than max_person_name_length=64$"),
        ("alicé".encode(), "", 400, r"is not a person's name"),
        ("alice", "admins", 403, r"may not assert role 'admins'; its roles are: auditors, operators$"),
    ],
)
def test_escapes_and_roles_not_granted_are_refused_and_counted(
    console: Daemon, name: str | bytes, roles: str, status: int, message: str
) -> None:
    reply = as_person(console, "/v1/modules/demo/whoami", name, roles)
    assert reply.status_code == status, reply.text
    assert re.search(message, reply.json()["error"]["message"])
    code = "forbidden" if status == 403 else "bad_params"
    wait_refused(console, ME, code, "delegation http POST /v1/modules/demo/whoami", 1)
    assert not [line for line in audit_lines(console) if line.get("operation") == "demo.whoami"]


def test_a_task_started_for_a_person_records_who(console: Daemon) -> None:
    reply = as_person(
        console, "/v1/tasks", "bob", "operators", body={"type": "echo", "params": {"word": "hi"}}
    )
    assert reply.status_code == 202, reply.text
    record = reply.json()["result"]
    assert record["started_by"]["person"] == "console:bob" and record["started_by"]["roles"] == ["operators"]
    assert record["started_by"]["uid"] == UID
    reply = as_person(console, "/v1/tasks", "bob", "", body={"type": "echo", "params": {"word": "hi"}})
    assert reply.status_code == 403  # without the role, bob may start nothing


def test_the_runs_a_person_started_are_listed_by_started_by(console: Daemon) -> None:
    with Client(socket=console.socket) as client:
        bob, alice = client.acting_for("bob", ["operators"]), client.acting_for("alice", ["operators"])
        started = [who.start_task("echo", {"word": "hi"}).id for who in (bob, alice, bob)]
        assert [r.id for r in bob.tasks(started_by="console:bob")] == [started[2], started[0]]
        assert [r.id for r in bob.tasks(started_by="console:alice")] == [started[1]]
        assert bob.tasks(started_by="console:bob", limit=1, before=started[2])[0].id == started[0]
        assert bob.tasks(started_by="console:carol") == []
        with pytest.raises(ParamsInvalid, match=r"started_by: String should have at most 256 characters"):
            bob.tasks(started_by="x" * 257)


def test_a_non_delegate_sending_the_header_is_refused_and_counted(
    start_daemon: Callable[..., Daemon],
) -> None:
    other = CONFIG.replace(f'subject = "{ME}"', 'subject = "uid:4242424"')
    daemon = start_daemon(other, name="other")
    reply = as_person(daemon, "/v1/modules/demo/whoami", "alice")
    assert reply.status_code == 403
    assert " is no delegate: it may not act on behalf of others" in reply.json()["error"]["message"]
    with unix_http(daemon) as http:  # without the header, its own rule applies as before
        assert http.post("/v1/modules/demo/whoami", json={}).status_code == 200
    wait_refused(daemon, ME, "forbidden", "delegation http POST /v1/modules/demo/whoami", 1)


def test_a_signed_tcp_request_may_not_delegate(start_daemon: Callable[..., Daemon]) -> None:
    """Its signature does not cover the headers: a person named in one could be changed on the way."""
    secure = start_daemon(SECURE_CONFIG, name="tcp")
    with signed(secure) as http:
        reply = http.post("/v1/modules/demo/whoami", json={}, headers={"x-pymgr-on-behalf-of": "alice"})
        assert reply.status_code == 403
        assert reply.json()["error"]["message"].startswith(
            "X-Pymgr-On-Behalf-Of is served on the Unix socket only (key:ci called over tcp)"
        )
        assert http.post("/v1/modules/demo/whoami", json={}).status_code == 200
    wait_refused(secure, "key:ci", "forbidden", "delegation http POST /v1/modules/demo/whoami", 1)


def test_a_sighup_swaps_the_delegates(console: Daemon) -> None:
    assert as_person(console, "/v1/modules/demo/whoami", "alice").status_code == 200
    (console.dir / "pymgr.toml").write_text(CONFIG.replace(f'subject = "{ME}"', 'subject = "uid:4242424"'))
    console.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "policy: replaced" not in console.log():
        assert time.monotonic() < deadline, console.log()
        time.sleep(0.05)
    reply = as_person(console, "/v1/modules/demo/whoami", "alice")
    assert reply.status_code == 403 and " is no delegate" in reply.json()["error"]["message"]


# --- the audit read endpoint -----------------------------------------------------------


def read_audit(daemon: Daemon, query: str, name: str = "carol", roles: str = "auditors") -> httpx.Response:
    return as_person(daemon, f"/v1/audit?{query}", name, roles, method="GET")


def test_audit_reads_are_the_policys_to_allow(console: Daemon) -> None:
    reply = read_audit(console, "", name="alice", roles="")
    assert reply.status_code == 403 and "no audit.read" in reply.json()["error"]["message"]
    assert read_audit(console, "").status_code == 200
    wait_refused(console, ME, "forbidden", "audit.read", 1)


def test_audit_pages_walk_every_record_across_rotations_newest_first(console: Daemon) -> None:
    for n in range(60):
        assert as_person(console, "/v1/modules/demo/echo", "alice", body={"n": n}).status_code == 200
    assert len(list((console.dir / "state").glob("audit.log.*"))) >= 3  # rotated, more than once
    seen: list[int] = []
    query = "subject=console:alice&action=demo.echo&outcome=ok&limit=7"
    while True:
        page = read_audit(console, query).json()["result"]
        seen += [record["params"]["n"] for record in page["records"]]
        assert len(page["records"]) <= 7
        if page["next"] is None:
            break
        query = f"subject=console:alice&action=demo.echo&outcome=ok&limit=7&before={page['next']}"
    assert seen == list(range(59, -1, -1))
    # Every read is itself a call in the log, the auditor's.
    assert any(line.get("operation") == "audit.read" for line in audit_lines(console))


def test_audit_filters_by_time_and_refuses_bad_queries(console: Daemon) -> None:
    as_person(console, "/v1/modules/demo/echo", "alice", body={"x": 1})
    records = read_audit(console, "subject=console:alice").json()["result"]["records"]
    when = records[0]["time"]
    assert (
        read_audit(console, f"subject=console:alice&since={when}").json()["result"]["records"] == records[:1]
    )
    later = read_audit(console, "subject=console:alice&since=2999-01-01T00:00:00Z").json()["result"]
    assert (later["records"], later["next"]) == ([], None)
    before = read_audit(console, "subject=console:alice&until=2000-01-01T00:00:00%2B02:00").json()["result"]
    assert before["records"] == []
    for query, message in [
        ("limit=1001", r"limit: at most 1000 records a page \(\[audit\] read_max_limit\), not 1001"),
        ("limit=0", r"limit"),
        ("since=yesterday", r"'yesterday' is not an ISO 8601 time"),
        ("since=0001-01-01T00:00:00%2B14:00", r"out of range once in UTC: between years 1 and 9999"),
        ("until=9999-12-31T23:59:59-14:00", r"out of range once in UTC"),
        ("subject=any", r"names no one in particular"),
        ("action=demo.echo;rm", r"an operation pattern like"),
        ("outcome=maybe", r"outcome"),
        ("before=12", r"is not a cursor"),
        ("color=red", r"color"),
        ("limit=1&limit=2", r"limit is given more than once"),
    ]:
        reply = read_audit(console, query)
        assert reply.status_code == 400, (query, reply.text)
        assert re.search(message, reply.json()["error"]["message"]), (query, reply.text)


def test_an_expired_cursor_is_an_empty_last_page(console: Daemon) -> None:
    page = read_audit(console, "before=1-0").json()["result"]
    assert (page["records"], page["next"]) == ([], None)


def test_the_audit_files_are_not_needed_to_exist_yet(tmp_path: Path) -> None:
    from pymgr.auth.auditread import AuditQuery, AuditReader

    reader = AuditReader(tmp_path / "audit.log", backups=2, max_scan_bytes=65536)
    files = reader.open()
    assert reader.scan(files, AuditQuery(limit=5)) == {
        "records": [],
        "next": None,
        "scanned_bytes": 0,
        "skipped_lines": 0,
        "too_large_lines": 0,
    }


# --- open streams after a policy swap ------------------------------------------------------


def open_events(daemon: Daemon, name: str, roles: str) -> socket.socket:
    """An event stream opened as a person; returned once its opening heartbeat came (the stream is held)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(daemon.socket))
    sock.settimeout(10)
    head = f"GET /v1/events HTTP/1.1\r\nHost: pymgr\r\nX-Pymgr-On-Behalf-Of: {name}\r\nX-Pymgr-Roles: {roles}\r\n\r\n"
    sock.sendall(head.encode())
    got = b""
    while b"event: heartbeat" not in got:
        data = sock.recv(65536)
        assert data, got
        got += data
    assert got.startswith(b"HTTP/1.1 200 "), got
    return sock


def ended(sock: socket.socket, wait_s: float) -> bool:
    """Whether the chunked body ends (its last chunk) within ``wait_s`` (heartbeats do not end it)."""
    deadline = time.monotonic() + wait_s
    got = b""
    while not got.endswith(b"0\r\n\r\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            return False
        got += data
    return True


def test_a_sighup_ends_the_streams_the_new_policy_no_longer_allows(console: Daemon) -> None:
    bob = open_events(console, "bob", "operators")  # tasks.read by role:operators
    dave = open_events(console, "dave", "operators")  # the same role, and a rule of his own after the swap
    try:
        new = CONFIG.replace('actions = ["tasks.read", "tasks.start:echo"]', 'actions = ["tasks.start:echo"]')
        new += '\n[[policy.rules]]\nsubjects = ["console:dave"]\nactions = ["tasks.read"]\n'
        (console.dir / "pymgr.toml").write_text(new)
        console.proc.send_signal(signal.SIGHUP)
        assert ended(bob, 20), console.log()  # the role lost tasks.read: its stream ends, cleanly
        assert not ended(dave, 1)  # dave is still allowed: his stream stays
        assert re.search(
            r"stream GET /v1/events of console:bob role:operators .* ended: the policy in force",
            console.log(),
        )
    finally:
        bob.close()
        dave.close()
