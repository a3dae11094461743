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
from pymgr.auth import audit as audit_module
from pymgr.auth.audit import REDACTED, AuditLog, Auditor, redact, secret_params, syslog_handler
from pymgr.auth.guard import GuardedDispatcher
from pymgr.auth.policy import Policy, PolicyConfig, PolicyRule
from pymgr.core.dispatch import Call
from pymgr.core.registry import Registry
from pymgr.errors import ActionFailed, Forbidden, NotFound, ParamsInvalid, TooLarge, Unavailable

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


def make(tmp_path: Path, *, fail_closed: bool = True, path: Path | None = None, max_params: int = 1000) -> GuardedDispatcher:
    reg = Registry()
    reg.add(Vault())
    rules = PolicyConfig(rules=[PolicyRule(subjects=["group:www-data"], actions=["vault.*"])])
    audit_log = AuditLog(path or tmp_path / "audit.log", max_bytes=1_000_000, backups=2)
    auditor = Auditor(audit_log, fail_closed=fail_closed, clock=lambda: FIXED_TIME)
    policy = Policy(rules, reg, owner_uid=0)
    return GuardedDispatcher(reg, policy=policy, auditor=auditor, max_params_bytes=max_params)


def lines(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]


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


async def test_denied_failed_and_invalid_calls_are_recorded(tmp_path: Path) -> None:
    d = make(tmp_path)
    with pytest.raises(Forbidden):
        await d.call(Call("vault", "store", {"name": "x", "password": "s3cret"}, NOBODY))
    with pytest.raises(ActionFailed):
        await d.call(Call("vault", "boom", {}, WWW))
    with pytest.raises(ParamsInvalid):
        await d.call(Call("vault", "store", {"name": "x", "password": "s3cret", "extra": 1}, WWW))
    with pytest.raises(NotFound):
        await d.call(Call("nope", "x", {"password": "s3cret"}, WWW))
    denied, failed, invalid, missing = lines(tmp_path)
    assert (denied["outcome"], denied["code"], denied["status"]) == ("error", "forbidden", 403)
    assert denied["identity"]["uid"] == 65534 and denied["params"]["password"] == REDACTED
    assert (failed["code"], failed["status"]) == ("internal", 500)
    assert (invalid["code"], invalid["status"], invalid["params"]["password"]) == ("bad_params", 400, REDACTED)
    assert missing["params"] == {"password": "[not recorded: unknown action]"}
    assert "s3cret" not in (tmp_path / "audit.log").read_text()


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
    with pytest.raises(TooLarge, match=r"^params of vault\.echo are 21 bytes of JSON, more than max_params_bytes=20$"):
        await d.call(Call("vault", "echo", {"a": "x" * 13}, WWW))
    assert [line["outcome"] for line in lines(tmp_path)] == ["ok", "error"]


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
    """``os`` for the audit module, with every write failing as on a full disk.

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
    monkeypatch.setattr(audit_module, "os", _FullDisk())
    with caplog.at_level(logging.ERROR, logger="pymgr.audit"):
        with pytest.raises(Unavailable, match=r"^the audit log .*/full/audit.log cannot be written \(No space left on device\); "
                                              r"pymgr refuses requests it cannot record"):
            await d.call(Call("vault", "echo", {}, WWW))
    assert "AUDIT LOG WRITE FAILED for unix vault.echo" in caplog.text
    assert d.auditor is not None and d.auditor.broken
    # The file opens fine, so the next call runs and fails again on its write.
    with pytest.raises(Unavailable):
        await d.call(Call("vault", "echo", {}, WWW))
    monkeypatch.undo()
    d.auditor.log.path = tmp_path / "missing-dir" / "audit.log"  # now it cannot even be opened
    ran = []
    d.registry.get("vault", "echo").func.__self__.echo = lambda **p: ran.append(p)  # type: ignore[attr-defined]
    with pytest.raises(Unavailable, match=r"cannot be written \(No such file or directory\)"):
        await d.call(Call("vault", "echo", {}, WWW))
    assert ran == []
    d.auditor.log.path = tmp_path / "audit.log"
    assert await d.call(Call("vault", "echo", {"b": 2}, WWW)) == {"b": 2}
    assert not d.auditor.broken and lines(tmp_path)[0]["params"] == {"b": 2}


async def test_fail_open_only_logs(tmp_path: Path, caplog: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    d = make(tmp_path, path=tmp_path / "full.log", fail_closed=False)
    monkeypatch.setattr(audit_module, "os", _FullDisk())
    with caplog.at_level(logging.ERROR, logger="pymgr.audit"):
        assert await d.call(Call("vault", "echo", {"c": 3}, WWW)) == {"c": 3}
    assert "AUDIT LOG WRITE FAILED" in caplog.text


def test_syslog_gets_a_copy(tmp_path: Path) -> None:
    address = str(tmp_path / "log.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    receiver.settimeout(5)
    audit_log = AuditLog(tmp_path / "audit.log", max_bytes=10_000, backups=1, syslog=syslog_handler(address, "authpriv"))
    try:
        Auditor(audit_log).record(WWW, operation="vault.echo", module="vault", action="echo", params={},
                                  error=None, duration_s=0.001)
        message = receiver.recv(4096).decode()
    finally:
        audit_log.shutdown()
        receiver.close()
    assert message.startswith("<86>pymgr-audit: {") and '"operation":"vault.echo"' in message  # authpriv.info = 10*8+6


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
        name: value for name in ("uid", "gid", "pid", "user", "key_id", "cert", "peer")
        if (value := getattr(identity, name)) is not None
    }
    if identity.groups:
        fields["groups"] = list(identity.groups)
    return (f'"transport":{json.dumps(identity.transport, ensure_ascii=False)},'
            f'"identity":{json.dumps(fields, ensure_ascii=False, separators=(",", ":"))}')


@pytest.mark.parametrize("identity", [
    Identity(transport="legacy", peer="127.0.0.1:5000"),
    Identity(transport="legacy", peer='host"with\\quotes é:1'),
    Identity(transport="legacy", peer="10.0.0.1:1", uid=3),  # not peer-only: the general form
    Identity(transport="tcp", peer="10.0.0.5:4000", key_id="ci"),
    WWW,
])
def test_the_caller_fragment_is_the_json_of_its_non_empty_fields(tmp_path: Path, identity: Identity) -> None:
    auditor = Auditor(AuditLog(tmp_path / "audit.log", max_bytes=10_000, backups=1))
    assert auditor._prefix(identity, "demo.echo", "demo", "echo") == (
        f'{_general_form(identity)},"operation":"demo.echo","module":"demo","action":"echo"'
    )


def test_callers_are_cached_per_object_legacy_ones_not_at_all(tmp_path: Path) -> None:
    auditor = Auditor(AuditLog(tmp_path / "audit.log", max_bytes=10_000, backups=1))
    twin = Identity(transport="unix", uid=33, gid=33, pid=10, user="www-data", groups=("www-data",))
    for identity in (WWW, WWW, twin, Identity(transport="legacy", peer="127.0.0.1:5000")):
        auditor._prefix(identity, "vault.echo", "vault", "echo")
    assert sorted(auditor._callers) == sorted((id(WWW), id(twin)))
    # An entry under NOBODY's id that holds another object (as if the id had been reused): not used.
    auditor._callers[id(NOBODY)] = (WWW, "wrong")
    assert '"uid":65534' in auditor._prefix(NOBODY, "vault.echo", "vault", "echo")


async def test_replacing_the_policy_rebinds_the_checks_and_the_names(tmp_path: Path) -> None:
    d = make(tmp_path)
    assert await d.call(Call("vault", "echo", {"a": 1}, WWW)) == {"a": 1}
    assert d._names
    d.policy = Policy(PolicyConfig(rules=[]), d.registry, owner_uid=0)
    assert d._names == {}
    with pytest.raises(Forbidden, match=r"^the policy allows user:www-data \(uid 33\) no vault\.echo; "):
        await d.call(Call("vault", "echo", {"a": 1}, WWW))
    d.policy = None
    assert await d.call(Call("vault", "echo", {"a": 2}, NOBODY)) == {"a": 2}
    assert [(line["operation"], line["outcome"]) for line in lines(tmp_path)] == [
        ("vault.echo", "ok"), ("vault.echo", "error"), ("vault.echo", "ok")]


class FakeTasks(Module):
    name = "tasks"

    @action
    async def start(self, type: str) -> str:
        return type


async def test_a_typed_task_operation_is_named_from_each_calls_params(tmp_path: Path) -> None:
    reg = Registry()
    reg.add(FakeTasks())
    rules = PolicyConfig(rules=[PolicyRule(subjects=["group:www-data"], actions=["tasks.start:*"])])
    auditor = Auditor(AuditLog(tmp_path / "audit.log", max_bytes=1_000_000, backups=2), clock=lambda: FIXED_TIME)
    policy = Policy(rules, reg, task_types=["scan", "backup"], owner_uid=0)
    d = GuardedDispatcher(reg, policy=policy, auditor=auditor, max_params_bytes=1000)
    for task_type in ("scan", "backup", "scan"):
        assert await d.call(Call("tasks", "start", {"type": task_type}, WWW)) == task_type
    assert [line["operation"] for line in lines(tmp_path)] == ["tasks.start:scan", "tasks.start:backup",
                                                                "tasks.start:scan"]
