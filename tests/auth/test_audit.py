"""The audit log and the guarded dispatcher: one line per call, secrets redacted, failures loud."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field, SecretStr

from pymgr import Identity, Module, action
from pymgr.auth import auditfile as auditfile_module
from pymgr.auth.audit import REDACTED, AuditLog, Auditor, redact, secret_params, syslog_handler
from pymgr.auth.pipeline import GuardedDispatcher
from pymgr.auth.refusals import RefusalTally
from pymgr.auth.policy import Policy, PolicyConfig, PolicyRule
from pymgr.core.dispatch import Call
from pymgr.core.registry import Registry
from pymgr.errors import ActionFailed, Forbidden, NotFound, NotRecorded, ParamsInvalid, TooLarge, Unavailable

WWW = Identity(transport="unix", uid=33, gid=33, pid=10, user="www-data", groups=("www-data",))
NOBODY = Identity(transport="unix", uid=65534, gid=65534, pid=11, user="nobody")
FIXED_TIME = 1_700_000_000.25


class Vault(Module):
    name = "vault"

    @action
    async def store(
        self,
        name: str,
        password: SecretStr,
        token: str = Field("", json_schema_extra={"secret": True}),
        pin: str | None = Field(None, json_schema_extra={"format": "password"}),
    ) -> str:
        return f"stored {name}"

    @action
    async def boom(self) -> None:
        raise RuntimeError("disk on fire")

    @action
    async def slow(self) -> None:
        await asyncio.sleep(10)

    @action
    async def echo(self, **params: Any) -> dict[str, Any]:
        return params

    @action
    async def mark(self, n: int) -> int:
        """An action whose running can be seen: it appends ``n`` to ``MARKS``."""
        MARKS.append(n)
        return n


MARKS: list[int] = []


def make(
    tmp_path: Path, *, fail_closed: bool = True, path: Path | None = None, max_params: int = 1000
) -> GuardedDispatcher:
    reg = Registry()
    reg.add(Vault())
    rules = PolicyConfig(rules=[PolicyRule(subjects=["group:www-data"], actions=["vault.*"])])
    audit_log = AuditLog(path or tmp_path / "audit.log", max_bytes=1_000_000, backups=2)
    tally = RefusalTally(
        AuditLog(tmp_path / "audit-refused.log", max_bytes=1_000_000, backups=2), clock=lambda: FIXED_TIME
    )
    auditor = Auditor(audit_log, fail_closed=fail_closed, clock=lambda: FIXED_TIME, refusals=tally)
    policy = Policy(rules, reg, owner_uid=0)
    return GuardedDispatcher(reg, policy=policy, auditor=auditor, max_params_bytes=max_params)


def lines(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]


def refusals(d: GuardedDispatcher, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """The refusals counted so far, written out, by source."""
    assert d.auditor is not None
    d.auditor.refusals.flush()
    path = tmp_path / "audit-refused.log"
    return (
        {line["source"]: line for line in map(json.loads, path.read_text().splitlines())}
        if path.exists()
        else {}
    )


async def test_an_allowed_call_is_one_line_with_every_field(tmp_path: Path) -> None:
    d = make(tmp_path)
    assert await d.call(Call("vault", "echo", {"a": 1}, WWW)) == {"a": 1}
    [line] = lines(tmp_path)
    duration = line.pop("duration_ms")
    assert isinstance(duration, float) and 0 <= duration < 1000
    assert line == {
        "time": "2023-11-14T22:13:20.250Z",
        "transport": "unix",
        "identity": {"uid": 33, "gid": 33, "pid": 10, "user": "www-data", "groups": ["www-data"]},
        "operation": "vault.echo",
        "module": "vault",
        "action": "echo",
        "params": {"a": 1},
        "outcome": "ok",
    }


async def test_secrets_are_redacted_by_the_schema(tmp_path: Path) -> None:
    d = make(tmp_path)
    params = {"name": "db", "password": "hunter2", "token": "t0k", "pin": "1234"}
    assert await d.call(Call("vault", "store", params, WWW)) == "stored db"
    [line] = lines(tmp_path)
    assert line["params"] == {"name": "db", "password": REDACTED, "token": REDACTED, "pin": REDACTED}
    assert "hunter2" not in (tmp_path / "audit.log").read_text()


async def test_a_call_that_ran_and_failed_is_recorded_and_refusals_are_counted_apart(tmp_path: Path) -> None:
    d = make(tmp_path)
    with pytest.raises(Forbidden):
        await d.call(Call("vault", "store", {"name": "x", "password": "s3cret"}, NOBODY))
    with pytest.raises(ActionFailed):
        await d.call(Call("vault", "boom", {}, WWW))
    with pytest.raises(ParamsInvalid):
        await d.call(Call("vault", "store", {"name": "x", "password": "s3cret", "extra": 1}, WWW))
    with pytest.raises(NotFound):
        await d.call(Call("nope", "x", {"password": "s3cret"}, WWW))
    [failed] = lines(tmp_path)  # only the call that ran has a record
    assert (failed["operation"], failed["outcome"], failed["code"], failed["status"]) == (
        "vault.boom",
        "error",
        "internal",
        500,
    )
    counted = refusals(d, tmp_path)
    assert counted == {
        "uid:65534": {
            "time": "2023-11-14T22:13:20.250Z",
            "last": "2023-11-14T22:13:20.250Z",
            "refused": 1,
            "source": "uid:65534",
            "transport": "unix",
            "codes": {"forbidden": 1},
            "operations": {"vault.store": 1},
            "other_operations": 0,
        },
        "uid:33": {
            "time": "2023-11-14T22:13:20.250Z",
            "last": "2023-11-14T22:13:20.250Z",
            "refused": 2,
            "source": "uid:33",
            "transport": "unix",
            "codes": {"bad_params": 1, "not_found": 1},
            "operations": {"vault.store": 1, "nope.x": 1},
            "other_operations": 0,
        },
    }
    for name in ("audit.log", "audit-refused.log"):
        assert "s3cret" not in (tmp_path / name).read_text()


async def test_a_cancelled_call_is_recorded_and_still_cancelled(tmp_path: Path) -> None:
    d = make(tmp_path)
    task = asyncio.create_task(d.call(Call("vault", "slow", {}, WWW)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lines(tmp_path)[0]["outcome"] == "cancelled"


async def test_params_size_limit_both_sides(tmp_path: Path) -> None:
    d = make(tmp_path, max_params=20)
    at_limit = {"a": "x" * 12}  # {"a":"xxxxxxxxxxxx"} is 20 bytes
    assert len(json.dumps(at_limit, separators=(",", ":"))) == 20
    assert await d.call(Call("vault", "echo", at_limit, WWW)) == at_limit
    with pytest.raises(
        TooLarge, match=r"^params of vault\.echo are 21 bytes of JSON, more than max_params_bytes=20$"
    ):
        await d.call(Call("vault", "echo", {"a": "x" * 13}, WWW))
    assert [line["outcome"] for line in lines(tmp_path)] == ["ok"]
    assert refusals(d, tmp_path)["uid:33"]["codes"] == {"too_large": 1}


def test_the_file_is_private_and_never_followed_through_a_symlink(tmp_path: Path) -> None:
    audit_log = AuditLog(tmp_path / "audit.log", max_bytes=10_000, backups=1)
    audit_log.write_line(b"{}\n")
    assert stat.S_IMODE((tmp_path / "audit.log").stat().st_mode) == 0o600
    audit_log.close()
    (tmp_path / "target").write_text("")
    (tmp_path / "link.log").symlink_to(tmp_path / "target")
    with pytest.raises(OSError):
        AuditLog(tmp_path / "link.log", max_bytes=10_000, backups=1).open()


def test_rotation_by_size_both_sides(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit_log = AuditLog(path, max_bytes=30, backups=2)
    line = b"0123456789abcd\n"  # 15 bytes
    audit_log.write_line(line)
    audit_log.write_line(line)  # 30 bytes: exactly at the limit, no rotation
    assert path.read_bytes() == line * 2 and not path.with_name("audit.log.1").exists()
    audit_log.write_line(line)  # 45 would pass 30: rotate first
    assert path.read_bytes() == line and path.with_name("audit.log.1").read_bytes() == line * 2
    for _ in range(4):
        audit_log.write_line(line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log", "audit.log.1", "audit.log.2"]


class _FullDisk:
    """``os`` for the audit file's module, with every write failing as on a full disk.

    (The audit log refuses device files such as /dev/full: it opens regular files only.)
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def write(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_a_failed_write_fails_closed_until_the_log_works_again(
    tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = tmp_path / "full" / "audit.log"
    full.parent.mkdir()
    d = make(tmp_path, path=full)
    monkeypatch.setattr(auditfile_module, "os", _FullDisk())
    MARKS.clear()
    with caplog.at_level(logging.ERROR, logger="pymgr.audit"):
        # The log was fine when the call began: it runs, and its caller learns it ran unrecorded.
        with pytest.raises(
            NotRecorded,
            match=r"^vault\.mark ran and succeeded, but its audit record could not be "
            r"written to .*/full/audit.log \(No space left on device\); its effect stands",
        ):
            await d.call(Call("vault", "mark", {"n": 1}, WWW))
    assert MARKS == [1] and "AUDIT LOG WRITE FAILED for unix vault.mark" in caplog.text
    assert d.auditor is not None and d.auditor.broken
    # Broken: the next call must first get a line through, which fails, so it does not run.
    with pytest.raises(
        Unavailable,
        match=r"^the audit log .*/full/audit.log cannot be written \(No space left on device\); "
        r"pymgr refuses requests it cannot record",
    ):
        await d.call(Call("vault", "mark", {"n": 2}, WWW))
    assert MARKS == [1]
    monkeypatch.undo()
    d.auditor.log.path = tmp_path / "audit.log"
    d.auditor.log.close()
    assert await d.call(Call("vault", "mark", {"n": 3}, WWW)) == 3
    resumed, record = lines(tmp_path)
    assert resumed == {
        "time": "2023-11-14T22:13:20.250Z",
        "event": "audit log writable again",
        "broken_since": "2023-11-14T22:13:20.250Z",
        "unrecorded_calls": 1,
    }
    assert record["params"] == {"n": 3} and MARKS == [1, 3] and not d.auditor.broken
    assert refusals(d, tmp_path)["uid:33"]["codes"] == {"unavailable": 1}


async def test_a_call_that_ran_and_failed_unrecorded_says_how_it_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = make(tmp_path, path=tmp_path / "full.log")
    monkeypatch.setattr(auditfile_module, "os", _FullDisk())
    with pytest.raises(
        NotRecorded, match=r"^vault\.boom ran and failed \(internal\), but its audit record"
    ) as info:
        await d.call(Call("vault", "boom", {}, WWW))
    assert info.value.details is not None
    assert (
        info.value.details["ran"],
        info.value.details["outcome"],
        info.value.details["error"]["code"],
    ) == (True, "error", "internal")
    assert info.value.http_status == 500 and info.value.legacy_code == 10


async def test_fail_open_only_logs(tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    d = make(tmp_path, path=tmp_path / "full.log", fail_closed=False)
    monkeypatch.setattr(auditfile_module, "os", _FullDisk())
    with caplog.at_level(logging.ERROR, logger="pymgr.audit"):
        assert await d.call(Call("vault", "echo", {"c": 3}, WWW)) == {"c": 3}
        assert await d.call(Call("vault", "echo", {"c": 4}, WWW)) == {"c": 4}
    assert caplog.text.count("AUDIT LOG WRITE FAILED") == 2


def test_syslog_gets_a_copy(tmp_path: Path) -> None:
    address = str(tmp_path / "log.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    receiver.settimeout(5)
    audit_log = AuditLog(
        tmp_path / "audit.log", max_bytes=10_000, backups=1, syslog=syslog_handler(address, "authpriv")
    )
    try:
        Auditor(audit_log).record(
            WWW,
            operation="vault.echo",
            module="vault",
            action="echo",
            params={},
            error=None,
            duration_s=0.001,
        )
        message = receiver.recv(4096).decode()
    finally:
        audit_log.shutdown()
        receiver.close()
    assert (
        message.startswith("<86>pymgr-audit: {") and '"operation":"vault.echo"' in message
    )  # authpriv.info = 10*8+6


def test_secret_params_and_redact() -> None:
    reg = Registry()
    reg.add(Vault())
    secrets = secret_params(reg.get("vault", "store").params_model)
    assert secrets == {"password", "token", "pin"}
    params = {"name": "n"}
    assert redact(params, secrets) is params  # nothing to hide: no copy
    assert redact([1], secrets) == "[not an object: list]"


def _general_form(identity: Identity) -> str:
    """The caller fragment as json builds it, field by field (what the fast paths must equal)."""
    fields: dict[str, Any] = {
        name: value
        for name in ("uid", "gid", "pid", "user", "key_id", "cert", "peer")
        if (value := getattr(identity, name)) is not None
    }
    if identity.groups:
        fields["groups"] = list(identity.groups)
    return (
        f'"transport":{json.dumps(identity.transport, ensure_ascii=False)},'
        f'"identity":{json.dumps(fields, ensure_ascii=False, separators=(",", ":"))}'
    )


@pytest.mark.parametrize(
    "identity",
    [
        Identity(transport="legacy", peer="127.0.0.1:5000"),
        Identity(transport="legacy", peer='host"with\\quotes é:1'),
        Identity(transport="legacy", peer="10.0.0.1:1", uid=3),  # not peer-only: the general form
        Identity(transport="tcp", peer="10.0.0.5:4000", key_id="ci"),
        WWW,
    ],
)
def test_the_caller_fragment_is_the_json_of_its_non_empty_fields(tmp_path: Path, identity: Identity) -> None:
    auditor = Auditor(AuditLog(tmp_path / "audit.log", max_bytes=10_000, backups=1))
    assert auditor._prefix(identity, "demo.echo", "demo", "echo") == (
        f'{_general_form(identity)},"operation":"demo.echo","module":"demo","action":"echo"'
    )


async def test_replacing_the_policy_rebinds_the_checks_and_the_names(tmp_path: Path) -> None:
    d = make(tmp_path)
    assert await d.call(Call("vault", "echo", {"a": 1}, WWW)) == {"a": 1}
    assert d._known_names
    d.policy = Policy(PolicyConfig(rules=[]), d.registry, owner_uid=0)
    assert d._known_names == {}
    with pytest.raises(Forbidden, match=r"^the policy allows user:www-data \(uid 33\) no vault\.echo; "):
        await d.call(Call("vault", "echo", {"a": 1}, WWW))
    d.policy = None
    assert await d.call(Call("vault", "echo", {"a": 2}, NOBODY)) == {"a": 2}
    assert [(line["operation"], line["outcome"]) for line in lines(tmp_path)] == [
        ("vault.echo", "ok"),
        ("vault.echo", "ok"),
    ]
    assert refusals(d, tmp_path)["uid:33"]["codes"] == {"forbidden": 1}


class FakeTasks(Module):
    name = "tasks"

    @action
    async def start(self, type: str) -> str:
        return type


async def test_a_typed_task_operation_is_named_from_each_calls_params(tmp_path: Path) -> None:
    reg = Registry()
    reg.add(FakeTasks())
    rules = PolicyConfig(rules=[PolicyRule(subjects=["group:www-data"], actions=["tasks.start:*"])])
    auditor = Auditor(
        AuditLog(tmp_path / "audit.log", max_bytes=1_000_000, backups=2), clock=lambda: FIXED_TIME
    )
    policy = Policy(
        rules,
        reg,
        task_types=["scan", "backup"],
        task_operations={FakeTasks.start: "tasks.start"},
        owner_uid=0,
    )
    d = GuardedDispatcher(reg, policy=policy, auditor=auditor, max_params_bytes=1000)
    for task_type in ("scan", "backup", "scan"):
        assert await d.call(Call("tasks", "start", {"type": task_type}, WWW)) == task_type
    assert [line["operation"] for line in lines(tmp_path)] == [
        "tasks.start:scan",
        "tasks.start:backup",
        "tasks.start:scan",
    ]
