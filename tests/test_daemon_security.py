"""The security model end to end: the real daemon, its real sockets, real other users.

Peer credentials and the policy on the Unix socket (as root and as www-data),
signed requests on TCP (good, unsigned, wrong, stale, future, replayed,
unknown key), the legacy listener's narrow rule, the audit file, the rate
limit, TLS client certificates, and the start-up errors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.legacy_client import call as legacy_call
from pymgr.auth.hmac_auth import HmacAuth
from pymgr.client import Client
from pymgr.errors import Forbidden, RateLimited, Unauthenticated
from tests.conftest import EXAMPLES, PYMGR, Daemon, curl_as_www_data, launch_daemon

CI_SECRET = "ci-secret-0123456789"
LEGACY_SECRET = "legacy-test-secret"

SECURE_CONFIG = f"""
state_dir = "state"
log_level = "debug"

[http]
unix_socket = "pymgr.sock"
socket_mode = "0666"
allow_world_writable = true
tcp = "127.0.0.1:0"

[legacy]
enabled = true
port = 0
secret = "{LEGACY_SECRET}"

[[auth.keys]]
id = "ci"
secret = "{CI_SECRET}"

[[auth.keys]]
id = "old"
secret = "old-secret-0123456789"

# The secrets above are the tests' own, public: the config files are 0644.
[security]
public_secrets = true

[[policy.rules]]
name = "root, for the test itself"
subjects = ["uid:0", "owner"]
actions = ["*"]

[[policy.rules]]
name = "web"
subjects = ["group:www-data"]
actions = ["demo.*", "tasks.read"]

[[policy.rules]]
name = "ci"
subjects = ["key:ci"]
actions = ["demo.echo", "demo.whoami", "tasks.read", "tasks.start:echo"]

[[policy.rules]]
name = "legacy"
subjects = ["legacy"]
actions = ["demo.echo"]

[modules]
enabled = ["demo", "tasks", "SCAN_MODULE"]

[commands.greet]
argv = ["/usr/bin/printf", "hello %s", "{{name}}"]
doc = "Greets; a command from the config, no Python."

[commands.greet.params]
name = {{ type = "str", pattern = "^[a-z ;$()|&-]+$" }}

[tasks.types.echo]
argv = ["/bin/echo", "{{word}}"]

[tasks.types.echo.params]
word = {{ type = "str" }}

[tasks.types.scan]
argv = ["{{python}}", "{EXAMPLES}/scan.py", "--task-id", "{{task_id}}", "--duration", "0"]

[tasks.types.scan.params]
task_id = {{ type = "int", min = 0 }}
"""

needs_www_data = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("curl") is None,
    reason="needs root, setpriv and curl to call as www-data (uid 33)",
)


def tcp_url(daemon: Daemon) -> str:
    for line in daemon.log().splitlines():
        if " pymgr: ready " in line:
            ready = json.loads(line.split(" pymgr: ready ", 1)[1])
            address = next(a for a in ready["http"] if a.startswith("tcp:"))
            return "http://" + address.removeprefix("tcp:")
    raise AssertionError("no ready line")


def audit_lines(daemon: Daemon) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (daemon.dir / "state" / "audit.log").read_text().splitlines()]


def refused_count(daemon: Daemon, source: str, code: str, operation: str) -> int:
    """How many refusals of ``operation`` with ``code`` the refusals' file counts for ``source``."""
    path = daemon.dir / "state" / "audit-refused.log"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return sum(
        min(line["codes"].get(code, 0), line["operations"].get(operation, 0))
        for line in lines
        if line["source"] == source
    )


def wait_refused(daemon: Daemon, source: str, code: str, operation: str, at_least: int) -> None:
    """Refusals are written at the end of their second: wait (a few seconds at most) for them."""
    deadline = time.monotonic() + 10
    while refused_count(daemon, source, code, operation) < at_least:
        assert time.monotonic() < deadline, (
            f"{source} {code} {operation}: fewer than {at_least} refusals counted"
        )
        time.sleep(0.1)


@pytest.fixture(scope="module")
def secure() -> Iterator[Daemon]:
    base = Path(tempfile.mkdtemp(prefix="pymgr-secure-"))
    base.chmod(0o755)  # www-data must reach the socket (pytest's tmp dirs are 0700)
    daemon = launch_daemon(base / "d", SECURE_CONFIG)
    (base / "d").chmod(0o755)
    yield daemon
    daemon.stop()
    shutil.rmtree(base, ignore_errors=True)


def unix(daemon: Daemon) -> Client:
    return Client(socket=daemon.socket)


def signed(daemon: Daemon, key_id: str = "ci", secret: str = CI_SECRET, **auth: Any) -> httpx.Client:
    return httpx.Client(
        base_url=tcp_url(daemon), auth=HmacAuth(key_id, secret, **auth), timeout=30, trust_env=False
    )


# --- Unix socket: peer credentials and the policy -----------------------------------


def test_root_is_allowed_by_its_rule_and_whoami_shows_the_peer(secure: Daemon) -> None:
    with unix(secure) as c:
        me = c.call("demo", "whoami")
        assert (me["transport"], me["uid"], me["pid"]) == ("unix", 0, os.getpid())
        assert c.call("demo", "root_only").startswith("hello root")


@needs_www_data
def test_www_data_gets_what_its_group_rule_says_and_a_denial_is_audited(secure: Daemon) -> None:
    status, body = curl_as_www_data(secure, "/v1/modules/demo/whoami")
    assert status == 200 and (body["result"]["uid"], body["result"]["user"]) == (33, "www-data")
    status, body = curl_as_www_data(secure, "/v1/modules/SCAN_MODULE/start", '{"task_ids": "1"}')
    assert status == 403 and body["error"]["message"] == (
        "the policy allows user:www-data (uid 33) no SCAN_MODULE.start; an admin can add it to [[policy.rules]]"
    )
    # demo.* includes root_only, whose own requirement the rule cannot loosen.
    status, body = curl_as_www_data(secure, "/v1/modules/demo/root_only")
    assert status == 403 and body["error"]["message"].startswith("demo.root_only may only be called by uid:0")
    assert not [
        line
        for line in audit_lines(secure)
        if line["identity"].get("uid") == 33 and line["outcome"] == "error"
    ]
    for operation in ("SCAN_MODULE.start", "demo.root_only"):  # denied: nothing ran; counted apart
        wait_refused(secure, "uid:33", "forbidden", operation, 1)


def test_every_call_leaves_an_audit_line(secure: Daemon) -> None:
    with unix(secure) as c:
        c.call("demo", "echo", marker="audit-me")
    line = next(line for line in reversed(audit_lines(secure)) if line["params"] == {"marker": "audit-me"})
    assert (line["transport"], line["operation"], line["outcome"], line["identity"]["uid"]) == (
        "unix",
        "demo.echo",
        "ok",
        0,
    )
    assert line["identity"]["pid"] == os.getpid()


# --- TCP: signed requests ------------------------------------------------------------


def test_a_signed_request_is_identified_by_its_key(secure: Daemon) -> None:
    with Client(url=tcp_url(secure), key_id="ci", secret=CI_SECRET) as c:
        me = c.call("demo", "whoami")
        assert (me["transport"], me["key_id"], me["uid"]) == ("tcp", "ci", None)
        assert c.call("demo", "echo", q="a b&c") == {"q": "a b&c"}
        assert c.tasks(type="echo") == []
        record = c.start_task("echo", {"word": "hi; rm -rf /"})
        assert record.argv == ("/bin/echo", "hi; rm -rf /")
        with pytest.raises(Forbidden, match=r"^the policy allows key:ci no tasks\.start:scan"):
            c.start_task("scan", {"task_id": 1})
        with pytest.raises(Forbidden, match=r"^the policy allows key:ci no demo\.sleep"):
            c.call("demo", "sleep", seconds=0)


@pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("curl") is None, reason="needs openssl and curl"
)
def test_a_client_written_from_the_docs_in_bash_is_accepted(secure: Daemon) -> None:
    env = {**os.environ, "PYMGR_URL": tcp_url(secure), "PYMGR_KEY_ID": "ci", "PYMGR_SECRET": CI_SECRET}
    script = EXAMPLES / "signed_curl.sh"
    out = subprocess.run(
        [str(script), "demo", "echo", '{"from": "bash"}'],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    assert json.loads(out.stdout) == {"ok": True, "result": {"from": "bash"}}
    out = subprocess.run(
        [str(script), "demo", "whoami"], capture_output=True, text=True, env=env, timeout=30, check=True
    )
    assert json.loads(out.stdout)["result"]["key_id"] == "ci"


def test_unsigned_requests_get_401_with_the_scheme(secure: Daemon) -> None:
    r = httpx.post(tcp_url(secure) + "/v1/modules/demo/echo", json={}, trust_env=False)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "PYMGR-HMAC-SHA256"
    assert r.json()["error"]["message"].startswith(
        "request is not signed: missing X-Pymgr-Key, X-Pymgr-Timestamp, X-Pymgr-Nonce, X-Pymgr-Signature;"
    )
    assert httpx.get(tcp_url(secure) + "/v1/health", trust_env=False).status_code == 401


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"secret": "wrong-secret-0123456789"}, r"^signature does not match for key 'ci'"),
        ({"key_id": "nope"}, r"^unknown key id 'nope'$"),
        (
            {"clock": lambda: 1_000_000_000},
            r"^X-Pymgr-Timestamp 1000000000 is \d+ s in the past; the limit is clock_skew_s=300",
        ),
        ({"clock": lambda: 4_000_000_000}, r"^X-Pymgr-Timestamp 4000000000 is \d+ s in the future;"),
    ],
)
def test_bad_signatures_get_401_and_are_audited(secure: Daemon, auth: dict[str, Any], message: str) -> None:
    before = refused_count(secure, "tcp:127.0.0.0/8", "unauthenticated", "http POST /v1/modules/demo/echo")
    with signed(secure, **auth) as c:
        r = c.post("/v1/modules/demo/echo", json={})
    assert r.status_code == 401
    error = Unauthenticated(r.json()["error"]["message"])
    assert re.match(message, error.message), error.message
    wait_refused(secure, "tcp:127.0.0.0/8", "unauthenticated", "http POST /v1/modules/demo/echo", before + 1)


def test_a_replayed_request_gets_401(secure: Daemon) -> None:
    with signed(secure, nonce=lambda: "replay-nonce-0123456789") as c:
        assert c.post("/v1/modules/demo/echo", json={"n": 1}).status_code == 200
        r = c.post("/v1/modules/demo/echo", json={"n": 1})
    assert r.status_code == 401
    assert r.json()["error"]["message"].startswith(
        "X-Pymgr-Nonce 'replay-nonce-0123456789' was already used with key 'ci'"
    )


def test_both_rotation_keys_work_and_the_policy_tells_them_apart(secure: Daemon) -> None:
    with signed(secure, "old", "old-secret-0123456789") as c:
        r = c.post("/v1/modules/demo/echo", json={})
    assert r.status_code == 403 and "key:old" in r.json()["error"]["message"]  # known key, no rule


def test_a_command_from_the_config_is_an_action_under_the_policy_and_audit(secure: Daemon) -> None:
    with unix(secure) as c:
        result = c.call("commands", "greet", name="you; rm -rf $(ls) | x && y")
    assert (result["stdout"], result["exit_code"], result["truncated"]) == (
        "hello you; rm -rf $(ls) | x && y",
        0,
        False,
    )
    line = next(line for line in reversed(audit_lines(secure)) if line["operation"] == "commands.greet")
    assert line["params"] == {"name": "you; rm -rf $(ls) | x && y"} and line["outcome"] == "ok"
    with Client(url=tcp_url(secure), key_id="ci", secret=CI_SECRET) as c, pytest.raises(Forbidden):
        c.call("commands", "greet", name="ci")


# --- the legacy listener -----------------------------------------------------------


def test_legacy_callers_get_only_their_rule(secure: Daemon) -> None:
    assert secure.legacy_port is not None
    assert legacy_call("127.0.0.1", secure.legacy_port, LEGACY_SECRET, "demo", "echo", {"a": "1"}) == {
        "success": True,
        "msg": {"a": "1"},
    }
    reply = legacy_call(
        "127.0.0.1", secure.legacy_port, LEGACY_SECRET, "SCAN_MODULE", "start", {"task_ids": "1"}
    )
    assert reply["success"] is False and reply["msg"]["err_code"] == 3
    assert reply["msg"]["message"].startswith("the policy allows legacy caller 127.0.0.1:")
    bad = legacy_call("127.0.0.1", secure.legacy_port, "wrong", "demo", "echo")
    assert bad["msg"]["err_code"] == 3
    wait_refused(secure, "legacy:127.0.0.0/8", "unauthenticated", "legacy demo.echo", 1)


# --- limits across the daemon ---------------------------------------------------------


def test_rate_limit_per_identity_with_retry_after(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(SECURE_CONFIG + "\n[limits]\nrate_per_s = 0.5\nrate_burst = 3\n")
    with unix(daemon) as c:
        for _ in range(3):
            c.call("demo", "echo")
        with pytest.raises(
            RateLimited,
            match=r"^too many requests from uid:0: the limit is 0\.5 per second \(bursts of 3\); "
            r"retry in 2 s$",
        ) as info:
            c.call("demo", "echo")
    assert info.value.details == {"retry_after_s": 2} and info.value.http_status == 429
    assert info.value.retry_after_s == 2
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://pymgr") as raw:
        r = raw.get("/v1/health")
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    wait_refused(daemon, "uid:0", "rate_limited", "http GET /v1/health", 1)
    # Another identity has its own bucket.
    with signed(daemon) as c:
        assert c.post("/v1/modules/demo/echo", json={}).status_code == 200


def test_legacy_connection_cap_per_peer(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(SECURE_CONFIG.replace("port = 0\n", "port = 0\nmax_connections_per_peer = 2\n"))
    assert daemon.legacy_port is not None
    held = [socket.create_connection(("127.0.0.1", daemon.legacy_port)) for _ in range(2)]
    try:
        with socket.create_connection(("127.0.0.1", daemon.legacy_port), timeout=10) as third:
            reply = json.loads(third.recv(4096))
        assert reply["msg"] == {
            "err_code": 7,
            "message": "too many connections from 127.0.0.0/8: at most max_connections_per_peer=2",
        }
    finally:
        for sock in held:
            sock.close()


# --- start-up errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("allow_world_writable = true\n", ""),
            r'http\.socket_mode: Value error, "0666" lets every local user write to the socket and call pymgr; use "0660" '
            r"with socket_group, or set allow_world_writable = true in \[http\] to accept that \(line LINE:socket_mode\)",
        ),
        (
            ('subjects = ["group:www-data"]', 'subjects = ["grp:www-data"]'),
            r"policy\.rules\.1\.subjects\.0: Value error, unknown subject 'grp:www-data'; subjects are .* \(line LINE:grp:\)",
        ),
        (
            ('actions = ["demo.echo"]', 'actions = ["tasks.start"]'),
            r"policy\.rules\.3\.actions\.0: Value error, action pattern 'tasks\.start' needs a task type",
        ),
        (
            ('subjects = ["legacy"]', 'subjects = ["key:nope"]'),
            r"cannot start: policy rule #4 \('legacy'\): subject 'key:nope' names no key in \[\[auth\.keys\]\]; keys: ci, old",
        ),
        (
            ('[[auth.keys]]\nid = "ci"', '[[auth.keys]]\nid = "ci"\nsecret_file = "/nonexistent/key"'),
            r"set exactly one of `secret` or `secret_file`",
        ),
    ],
)
def test_bad_security_config_stops_start_up_naming_the_line(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    assert change[0] in SECURE_CONFIG
    text = SECURE_CONFIG.replace(*change)
    config = tmp_path / "pymgr.toml"
    config.write_text(text)
    found = re.search(r"LINE:([a-z_:]+)", message)
    if found:  # the line the message must name: where the bad value is
        number = next(n for n, line in enumerate(text.splitlines(), 1) if found.group(1) in line)
        message = message.replace(found.group(0), str(number))
    out = subprocess.run(
        [str(PYMGR), "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 78, out.stderr
    assert re.search(message, out.stderr), out.stderr


def test_a_tcp_listener_nobody_could_authenticate_on_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "pymgr.toml"
    config.write_text('state_dir = "state"\n[http]\nunix_socket = ""\ntcp = "127.0.0.1:0"\n')
    out = subprocess.run(
        [str(PYMGR), "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 78
    assert "http.tcp = '127.0.0.1:0' but no caller could authenticate on it: add [[auth.keys]]" in out.stderr


# --- TLS --------------------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=pymgr test CA",
        cwd=d,
    )
    for name, cn in (("server", "127.0.0.1"), ("client", "backup-host")):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={cn}",
            cwd=d,
        )
        (d / f"{name}.ext").write_text(
            "subjectAltName=IP:127.0.0.1\n" if name == "server" else "extendedKeyUsage=clientAuth\n"
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )
    return d


def test_tls_with_client_certificates_as_identity(start_daemon: Callable[..., Daemon], pki: Path) -> None:
    import ssl

    config = (
        SECURE_CONFIG.replace(
            "[legacy]",
            f'[http.tls]\ncertfile = "{pki}/server.pem"\nkeyfile = "{pki}/server.key"\nclient_ca = "{pki}/ca.pem"\n\n[legacy]',
        )
        + '\n[[policy.rules]]\nsubjects = ["cert:backup-host"]\nactions = ["demo.whoami"]\n'
    )
    daemon = start_daemon(config)
    url = tcp_url(daemon).replace("http://", "https://")
    with_cert = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with_cert.load_cert_chain(pki / "client.pem", pki / "client.key")
    with Client(url=url, tls=with_cert) as c:
        me = c.call("demo", "whoami")
        assert (me["transport"], me["cert"], me["key_id"]) == ("tcp", "backup-host", None)
        with pytest.raises(Forbidden):
            c.call("demo", "echo")
    with Client(url=url, tls=with_cert, key_id="ci", secret=CI_SECRET) as c:  # both names: both rules apply
        assert c.call("demo", "echo", x=1) == {"x": 1}
    without = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with Client(url=url, tls=without, key_id="ci", secret=CI_SECRET) as c:
        assert c.call("demo", "whoami")["key_id"] == "ci"
    with Client(url=url, tls=without) as c, pytest.raises(Unauthenticated, match=r"^request is not signed"):
        c.call("demo", "whoami")
