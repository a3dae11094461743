"""Attacks on the audit log, replayed: floods of refusals that rotated the record away, and a full disk.

- An unsigned TCP client (and www-data asking for what it may not have) sends
  refusals at full speed: the records of calls that ran before stay in the
  audit file, and the refusals' file counts every refusal exactly once.
- The same flood for ten minutes, at the full rate the review measured, on
  a simulated clock: the audit file is not touched, and the refusals' lines
  are bounded by sources x seconds.
- The audit log's filesystem is full: no partial line, no action runs that
  cannot be recorded, and once space returns the next records parse.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pymgr.auth.audit import AuditLog, Auditor
from pymgr.auth.guard import EdgeGuard
from pymgr.auth.refusals import RefusalTally
from pymgr.client import Client
from pymgr.core.identity import Identity
from pymgr.errors import PymgrError, RateLimited, Unauthenticated
from tests.conftest import Daemon, launch_daemon

#: The review's unsigned client: 90,500 refusals in 10 s.
REVIEW_RATE_PER_S = 9_050
FLOOD_S = 3.0

FLOOD_CONFIG = """
state_dir = "state"

[http]
unix_socket = "pymgr.sock"
socket_mode = "0666"
allow_world_writable = true
tcp = "127.0.0.1:0"

[[auth.keys]]
id = "ci"
secret = "ci-secret-0123456789"

[security]
public_secrets = true  # a test key; the directory is opened to www-data for the socket

[audit]
# Small, as in the review (it took 35 s to rotate six 10 MiB files): the flood here is seconds long.
max_bytes = 16384
backups = 1

[[policy.rules]]
subjects = ["uid:0"]
actions = ["*"]

[[policy.rules]]
subjects = ["group:www-data"]
actions = ["demo.echo"]

[modules]
enabled = ["demo"]
"""

#: Run as www-data with the system's Python (the test's venv may sit where www-data cannot read):
#: one privileged call, then denied calls at full speed until the deadline; prints the statuses seen.
WWW_DATA_FLOOD = r"""
import json, socket, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
def ask(sock, action):
    body = b"{}"
    sock.sendall(b"POST /v1/modules/demo/" + action + b" HTTP/1.1\r\nhost: pymgr\r\ncontent-length: 2\r\n\r\n" + body)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split(b" ")[1])
def connect():
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    return s
sock = connect()
statuses = {"echo": ask(sock, b"echo")}
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        status = ask(sock, b"root_only")
    except ConnectionError:
        sock = connect()
        continue
    statuses[status] = statuses.get(status, 0) + 1
print(json.dumps(statuses))
"""


def tcp_address(daemon: Daemon) -> tuple[str, int]:
    for line in daemon.log().splitlines():
        if " pymgr: ready " in line:
            ready = json.loads(line.split(" pymgr: ready ", 1)[1])
            host, port = (
                next(a for a in ready["http"] if a.startswith("tcp:")).removeprefix("tcp:").rsplit(":", 1)
            )
            return host, int(port)
    raise AssertionError("no ready line")


def unsigned_flood(address: tuple[str, int], seconds: float, seen: Counter[int]) -> None:
    """Unsigned requests on kept-alive connections until the deadline; counts the statuses answered."""
    deadline = time.monotonic() + seconds
    conn = http.client.HTTPConnection(*address, timeout=10)
    while time.monotonic() < deadline:
        try:
            conn.request("POST", "/v1/modules/demo/echo", body=b"{}")
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(*address, timeout=10)
            continue
        seen[response.status] += 1
    conn.close()


def read_lines(directory: Path, name: str) -> list[dict[str, Any]]:
    """Every line of a log and its rotated files, oldest first (each must parse)."""
    rotated = sorted(
        (p for p in directory.glob(name + ".*") if p.suffix[1:].isdigit()), key=lambda p: -int(p.suffix[1:])
    )
    files = [*rotated, directory / name] if (directory / name).exists() else rotated
    return [json.loads(line) for path in files for line in path.read_text().splitlines()]


def refused_total(state: Path, sources: set[str]) -> int:
    return sum(
        line["refused"] for line in read_lines(state, "audit-refused.log") if line["source"] in sources
    )


def test_a_flood_of_refusals_leaves_every_earlier_record_and_counts_each_refusal(open_dir: Path) -> None:
    daemon = launch_daemon(open_dir / "d", FLOOD_CONFIG)
    try:
        (open_dir / "d").chmod(0o755)
        state = daemon.dir / "state"
        with Client(socket=daemon.socket) as c:
            for n in range(5):
                assert c.call("demo", "echo", marker=f"before-{n}") == {"marker": f"before-{n}"}
        www = None
        if os.geteuid() == 0 and shutil.which("setpriv") and Path("/usr/bin/python3").exists():
            www = subprocess.Popen(
                [
                    "setpriv",
                    "--reuid=33",
                    "--regid=33",
                    "--init-groups",
                    "/usr/bin/python3",
                    "-c",
                    WWW_DATA_FLOOD,
                    str(daemon.socket),
                    str(FLOOD_S),
                ],
                stdout=subprocess.PIPE,
                cwd="/",
            )
        seen: Counter[int] = Counter()
        counters = [Counter[int]() for _ in range(3)]
        threads = [
            threading.Thread(target=unsigned_flood, args=(tcp_address(daemon), FLOOD_S, counter))
            for counter in counters
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for counter in counters:
            seen.update(counter)
        www_seen: dict[str, int] = json.loads(www.communicate(timeout=60)[0]) if www is not None else {}
        assert set(seen) <= {401, 429} and sum(seen.values()) > 1000, seen
        sent = {"tcp:127.0.0.0/8": sum(seen.values())}  # every loopback address is one source
        if www is not None:
            assert www_seen.pop("echo") == 200 and set(www_seen) <= {"403", "429"}, www_seen
            sent["uid:33"] = sum(www_seen.values())
        print(f"refusals sent in {FLOOD_S:g} s: {sent}")

        records = read_lines(state, "audit.log")
        markers = [line["params"].get("marker") for line in records if line.get("operation") == "demo.echo"]
        assert markers[:5] == [f"before-{n}" for n in range(5)], markers[:10]
        if www is not None:
            assert [line["identity"]["uid"] for line in records if line.get("operation") == "demo.echo"][
                5
            ] == 33
        assert not [
            line for line in records if line.get("outcome") == "error"
        ]  # no refusal among the records

        # Counted exactly: each window's lines come at its end (a timer), and once more at shutdown.
        deadline = time.monotonic() + 10
        while refused_total(state, set(sent)) < sum(sent.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for source, count in sent.items():
            assert refused_total(state, {source}) == count, source
        daemon.stop()
        for source, count in sent.items():
            assert refused_total(state, {source}) == count, source
        lines = read_lines(state, "audit-refused.log")
        assert len(lines) <= (FLOOD_S + 12) * len(sent)  # one a second per source, whatever the rate
    finally:
        daemon.stop()


class SimulatedClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_ten_minutes_of_refusals_at_full_rate_leave_the_audit_file_untouched(tmp_path: Path) -> None:
    """600 simulated seconds at the review's rate, from 3 callers and 200 more addresses: by construction."""
    clock = SimulatedClock(1_700_000_000.0)
    audit_log = AuditLog(tmp_path / "audit.log", max_bytes=16384, backups=1)
    refused_log = AuditLog(tmp_path / "audit-refused.log", max_bytes=10 * 1024 * 1024, backups=5)
    auditor = Auditor(audit_log, clock=clock, refusals=RefusalTally(refused_log, clock=clock))
    for n in range(5):
        auditor.record(
            Identity(transport="unix", uid=33, user="www-data"),
            operation="demo.echo",
            module="demo",
            action="echo",
            params={"marker": n},
            error=None,
            duration_s=0.001,
        )
    before = (tmp_path / "audit.log").read_bytes()
    edge = EdgeGuard(None, auditor)
    callers = [
        Identity(transport="tcp", peer="127.0.0.1:40000"),
        Identity(transport="unix", uid=65534, pid=7),
        Identity(transport="legacy", peer="127.0.0.1:50000"),
    ]
    callers += [Identity(transport="tcp", peer=f"10.1.{n // 250}.{n % 250}:1") for n in range(200)]
    errors: list[PymgrError] = [Unauthenticated("unsigned"), RateLimited("too many")]
    seconds, per_second = 600, REVIEW_RATE_PER_S
    step = 1 / per_second
    refusals = 0
    for second in range(seconds):
        clock.now = 1_700_000_000.0 + second
        for i in range(per_second):
            edge.refused(callers[refusals % len(callers)], "http POST /v1/modules/demo/echo", errors[i & 1])
            refusals += 1
            clock.now += step
    auditor.close()
    assert (tmp_path / "audit.log").read_bytes() == before and not (tmp_path / "audit.log.1").exists()
    lines = read_lines(tmp_path, "audit-refused.log")
    assert sum(line["refused"] for line in lines) == refusals == seconds * per_second
    windows = seconds + 1  # the last refusals may spill into one more second
    assert len(lines) <= windows * (RefusalTally(refused_log).max_sources + 1)
    assert lines[0]["time"].startswith("2023-11-14T22:13:20")  # the refusals' own history is whole too
    assert not (tmp_path / "audit-refused.log.1").exists()
    others = [line for line in lines if line["source"] == "[other sources]"]
    assert len(others) == seconds  # 203 sources a second: 64 lines of their own, the rest on one


# --- a full disk ---------------------------------------------------------------------


def _mount_tmpfs(directory: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "fs"
    mount.mkdir()
    _mount_tmpfs(mount, "4M")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem to the last byte; the filler file, to free it again."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"x" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def full_disk_config(fs: Path, marks: Path) -> str:
    return f"""
state_dir = "state"

[http]
unix_socket = "pymgr.sock"

[audit]
path = "{fs}/audit.log"

[[policy.rules]]
subjects = ["uid:0"]
actions = ["*"]

[modules]
enabled = ["demo"]

[commands.mark]
argv = ["/bin/sh", "-c", "touch \\"$1\\"", "mark", "{{path}}", "{{pad}}"]
doc = "Leaves a file behind: the visible side effect of a call that ran (pad makes its record long)."

[commands.mark.params]
path = {{ type = "path", base = "{marks}" }}
pad = {{ type = "str", default = "", max_length = 8000 }}
"""


@pytest.mark.root
def test_on_a_full_disk_no_action_runs_unrecorded_and_no_line_is_partial(
    small_fs: Path,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    daemon = start_daemon(full_disk_config(small_fs, marks))
    outcomes: dict[str, str] = {}

    def mark(name: str, **params: Any) -> None:
        with Client(socket=daemon.socket) as c:
            try:
                c.call("commands", "mark", path=name, **params)
                outcomes[name] = "ok"
            except PymgrError as exc:
                outcomes[name] = exc.code

    for n in range(3):
        mark(f"before-{n}")
    filler = fill(small_fs)
    # Long params make a record longer than what is left of the log's last page: a short write.
    for n in range(6):
        mark(f"full-{n}", **({"pad": "x" * 6000} if n % 2 == 0 else {}))
    filler.unlink()
    for n in range(2):
        mark(f"after-{n}")
    daemon.stop()

    text = (small_fs / "audit.log").read_text()
    assert text.endswith("\n")
    records = [
        json.loads(line) for line in text.splitlines()
    ]  # every line parses: nothing partial, nothing glued
    recorded = {line["params"]["path"] for line in records if line.get("operation") == "commands.mark"}
    ran = {p.name for p in marks.iterdir()}
    print(f"outcomes: {outcomes}")
    assert ran == recorded, "every call that ran has its record, and no other call ran"
    assert {name for name, outcome in outcomes.items() if outcome == "ok"} == ran
    refused = {name for name, outcome in outcomes.items() if outcome != "ok"}
    assert refused and all(outcomes[name] == "unavailable" for name in refused)  # refused before running
    assert {"before-0", "before-1", "before-2", "after-0", "after-1"} <= ran


@pytest.mark.root
def test_a_short_write_on_a_full_disk_is_cut_back(small_fs: Path) -> None:
    audit_log = AuditLog(small_fs / "audit.log", max_bytes=1 << 20, backups=1)
    audit_log.write_line(b'{"n":0}\n')
    fill(small_fs)
    with pytest.raises(OSError) as info:
        audit_log.write_line(b'{"n":1,"pad":"' + b"x" * 9000 + b'"}\n')  # more than the last page has left
    assert info.value.errno == 28
    assert (small_fs / "audit.log").read_bytes() == b'{"n":0}\n'
    (small_fs / "filler").unlink()
    audit_log.write_line(b'{"n":2}\n')
    assert (small_fs / "audit.log").read_bytes() == b'{"n":0}\n{"n":2}\n'
    audit_log.shutdown()
