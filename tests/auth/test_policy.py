"""The policy: subjects, patterns, deny by default, code requirements, task operations."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from pymgr import Identity, Module, action
from pymgr.auth.policy import Policy, PolicyConfig, PolicyError, PolicyRule, parse_pattern, parse_subject
from pymgr.config import ConfigError, load_config
from pymgr.core.dispatch import Call, Dispatcher
from pymgr.core.registry import Registry
from pymgr.errors import Forbidden, NotFound, ParamsInvalid

OWNER_UID = 1000
WWW = Identity(transport="unix", uid=33, gid=33, pid=10, user="www-data", groups=("www-data",))
ROOT = Identity(transport="unix", uid=0, gid=0, pid=11, user="root", groups=("root",))
ALICE = Identity(transport="unix", uid=OWNER_UID, gid=1000, pid=12, user="alice", groups=("alice", "adm"))
CI = Identity(transport="tcp", key_id="ci", peer="10.0.0.5:4000")
CERT = Identity(transport="tcp", cert="backup.example", peer="10.0.0.6:4000")
LEGACY = Identity(transport="legacy", peer="127.0.0.1:5000")
UNSIGNED = Identity(transport="tcp", peer="10.0.0.7:4000")


class Firewall(Module):
    name = "firewall"

    @action
    async def allow_port(self, port: int) -> int:
        return port

    @action(read_only=True)
    async def rules(self) -> list[str]:
        return ["22/tcp"]


class Admin(Module):
    name = "admin"

    @action(allow=["uid:0"])
    async def reboot(self) -> str:
        return "rebooting"

    @action(read_only=True)
    async def uptime(self) -> int:
        return 1


class Ledger(Module):
    """An explicit module, as ``audit`` is: only a rule naming it grants its actions."""

    name = "ledger"

    @action(read_only=True, explicit=True)
    async def read(self) -> str:
        return "records"


class FakeTasks(Module):
    name = "tasks"

    @action(read_only=True)
    async def list(self) -> Any:
        return []

    @action(read_only=True)
    async def show(self, id: int) -> Any:
        return {"id": id}

    @action
    async def start(self, type: str, params: dict[str, Any] | None = None) -> Any:
        return {"started": type}

    @action
    async def stop(self, id: int) -> Any:
        return {"stopped": id}

    @action(read_only=True)
    async def logs(self, id: int) -> Any:
        return {"logs": id}


TASK_TYPES = {1: "scan", 2: "backup"}
#: What the daemon tells the policy about its task module: these functions are the task operations.
FAKE_TASK_OPERATIONS = {
    FakeTasks.list: "tasks.read",
    FakeTasks.show: "tasks.read",
    FakeTasks.start: "tasks.start",
    FakeTasks.stop: "tasks.stop",
    FakeTasks.logs: "tasks.logs",
}


def task_type_of(task_id: int) -> str:
    if task_id not in TASK_TYPES:
        raise NotFound(f"no task with id {task_id}")
    return TASK_TYPES[task_id]


def registry() -> Registry:
    reg = Registry()
    for module in (Firewall(), Admin(), Ledger(), FakeTasks()):
        reg.add(module)
    return reg


def policy(*rules: dict[str, Any], keys: tuple[str, ...] = ("ci",)) -> Policy:
    config = PolicyConfig(rules=[PolicyRule(**r) for r in rules])
    return Policy(
        config,
        registry(),
        key_ids=keys,
        task_types=["scan", "backup"],
        task_type_of=task_type_of,
        task_operations=FAKE_TASK_OPERATIONS,
        owner_uid=OWNER_UID,
    )


async def call(p: Policy, identity: Identity, module: str, action_name: str, **params: Any) -> Any:
    dispatcher = Dispatcher(p._registry, authorize=p.authorize, authorize_params=p.authorize_params)
    return await dispatcher.call(Call(module, action_name, params, identity))


# --- parsing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("user:www-data", "user:www-data"),
        ("uid:33", "uid:33"),
        ("group:adm", "group:adm"),
        ("key:ci", "key:ci"),
        ("cert:backup.example", "cert:backup.example"),
        ("legacy", "legacy"),
        ("owner", "owner"),
        ("any", "any"),
    ],
)
def test_subjects_parse(text: str, shown: str) -> None:
    assert str(parse_subject(text)) == shown


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "usr:www-data",
            r"^unknown subject 'usr:www-data'; subjects are user:NAME, uid:N, group:NAME, key:ID, "
            r"cert:CN, fleet:ID, legacy, owner, any, role:NAME or NAMESPACE:NAME \(a \[\[policy.delegates\]\] namespace\)$",
        ),
        ("root", r"^unknown subject 'root'; subjects are "),
        ("user:", r"^subject 'user:' needs a name after 'user':, without spaces$"),
        ("user: bob", r"^subject 'user: bob' needs a name after 'user':, without spaces$"),
        ("uid:www", r"^subject 'uid:www': uid must be a number, like uid:33$"),
        ("uid:-1", r"^subject 'uid:-1': uid must be a number"),
    ],
)
def test_bad_subjects_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_subject(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "firewall",
            r"^action pattern 'firewall' names no action: write firewall\.\* for every action of module 'firewall'$",
        ),
        (
            "tasks.start",
            r"^action pattern 'tasks\.start' needs a task type: write tasks\.start:TYPE, or tasks\.start:\* ",
        ),
        (
            "tasks.stop:",
            r"^action pattern 'tasks\.stop:' needs a task type after the colon, or \* for every type$",
        ),
        ("tasks.list", r"^action pattern 'tasks\.list': task reads are one operation; write tasks\.read$"),
        (
            "tasks.counts",
            r"^action pattern 'tasks\.counts': task reads are one operation; write tasks\.read$",
        ),
        ("demo.*:write", r"^action pattern 'demo\.\*:write': after ':' only 'read' may follow"),
        (":read", r"^action pattern ':read': after ':' only 'read' may follow"),
        ("demo.echo; rm", r"^action pattern 'demo\.echo; rm' has characters other than names"),
    ],
)
def test_bad_patterns_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_pattern(text)


def test_unknown_subject_and_bad_rule_stop_start_up_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[policy.rules]]\nsubjects = ["group:www-data"]\nactions = ["demo.*"]\n\n'
        '[[policy.rules]]\nname = "ci"\nsubjects = ["usr:ci"]\nactions = ["demo"]\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert re.search(
        r"^  policy\.rules\.1\.subjects\.0: Value error, unknown subject 'usr:ci'; .* \(line 7\)$", text, re.M
    )
    assert re.search(
        r"^  policy\.rules\.1\.actions\.0: Value error, action pattern 'demo' names no action.* \(line 8\)$",
        text,
        re.M,
    )


def test_a_key_subject_must_name_a_configured_key() -> None:
    with pytest.raises(
        PolicyError,
        match=r"^policy rule #1 \('ci'\): subject 'key:cj' names no key in \[\[auth\.keys\]\]; "
        r"keys: ci$",
    ):
        policy({"name": "ci", "subjects": ["key:cj"], "actions": ["*"]})


def test_a_malformed_allow_in_code_stops_start_up() -> None:
    class Bad(Module):
        name = "bad"

        @action(allow=["root"])
        async def x(self) -> None:
            return None

    reg = Registry()
    reg.add(Bad())
    with pytest.raises(
        PolicyError, match=r"^action bad\.x: @action\(allow=\.\.\.\) entry is not a subject: unknown subject"
    ):
        Policy(PolicyConfig(), reg, owner_uid=0)


# --- decisions ----------------------------------------------------------------


async def test_deny_by_default_even_for_root() -> None:
    p = policy()
    for who in (ROOT, WWW, CI, LEGACY):
        with pytest.raises(Forbidden, match=r"^the policy allows .* no firewall\.rules; an admin can add it"):
            await call(p, who, "firewall", "rules")


async def test_root_is_not_implicitly_allowed() -> None:
    p = policy({"subjects": ["group:www-data"], "actions": ["*"]})
    with pytest.raises(Forbidden, match=r"^the policy allows user:root \(uid 0\) no firewall\.allow_port; "):
        await call(p, ROOT, "firewall", "allow_port", port=22)
    assert await call(p, WWW, "firewall", "allow_port", port=22) == 22


async def test_www_data_may_run_firewall_actions_and_nothing_else() -> None:
    p = policy({"name": "web", "subjects": ["group:www-data"], "actions": ["firewall.*"]})
    assert await call(p, WWW, "firewall", "allow_port", port=80) == 80
    assert await call(p, WWW, "firewall", "rules") == ["22/tcp"]
    with pytest.raises(Forbidden) as info:
        await call(p, WWW, "admin", "uptime")
    assert info.value.details == {"operation": "admin.uptime", "caller": "user:www-data (uid 33)"}


async def test_read_only_role_is_one_rule() -> None:
    p = policy({"name": "auditors", "subjects": ["user:alice"], "actions": ["*:read"]})
    assert await call(p, ALICE, "firewall", "rules") == ["22/tcp"]
    assert await call(p, ALICE, "admin", "uptime") == 1
    assert await call(p, ALICE, "tasks", "list") == []
    assert await call(p, ALICE, "tasks", "logs", id=1) == {"logs": 1}
    for module, name, params in (
        ("firewall", "allow_port", {"port": 1}),
        ("tasks", "start", {"type": "scan"}),
        ("tasks", "stop", {"id": 1}),
    ):
        with pytest.raises(Forbidden):
            await call(p, ALICE, module, name, **params)


@pytest.mark.parametrize(
    ("pattern", "granted"),
    [
        ("*", False),
        ("*:read", False),
        ("*.read", False),
        ("l*.*", False),
        ("[l]edger.read", False),
        ("ledger.*", True),
        ("ledger.read", True),
        ("ledger.*:read", True),
        ("ledger.r*", True),
    ],
)
async def test_an_explicit_action_is_granted_only_by_a_pattern_naming_its_module(
    pattern: str, granted: bool
) -> None:
    # A "read anything" rule written before the audit log could be read back must not grant it on upgrade.
    p = policy({"subjects": ["user:alice"], "actions": [pattern]})
    assert p.allows(ALICE, p._registry.get("ledger", "read")) is granted
    if granted:
        assert await call(p, ALICE, "ledger", "read") == "records"
    else:
        with pytest.raises(Forbidden, match=r"^the policy allows user:alice \(uid 1000\) no ledger\.read; "):
            await call(p, ALICE, "ledger", "read")


async def test_read_qualifier_narrows_a_pattern() -> None:
    p = policy({"subjects": ["any"], "actions": ["firewall.*:read"]})
    assert await call(p, WWW, "firewall", "rules") == ["22/tcp"]
    with pytest.raises(Forbidden):
        await call(p, WWW, "firewall", "allow_port", port=1)
    with pytest.raises(Forbidden):
        await call(p, WWW, "admin", "uptime")


async def test_a_key_based_ci_user() -> None:
    p = policy(
        {
            "name": "ci",
            "subjects": ["key:ci"],
            "actions": ["tasks.read", "tasks.start:scan", "tasks.stop:scan"],
        }
    )
    assert await call(p, CI, "tasks", "show", id=1) == {"id": 1}
    assert await call(p, CI, "tasks", "start", type="scan") == {"started": "scan"}
    assert await call(p, CI, "tasks", "stop", id=1) == {"stopped": 1}
    with pytest.raises(Forbidden, match=r"^the policy allows key:ci no tasks\.start:backup; "):
        await call(p, CI, "tasks", "start", type="backup")
    with pytest.raises(Forbidden, match=r"^the policy allows key:ci no tasks\.stop:backup; "):
        await call(p, CI, "tasks", "stop", id=2)
    with pytest.raises(Forbidden, match=r"^the policy allows key:ci no tasks\.logs:TYPE; "):
        await call(p, CI, "tasks", "logs", id=1)
    # No such task: the caller may stop some type, so it learns that (404), and the action never runs:
    # a task started meanwhile under that id, of a type the caller may not stop, is not touched.
    with pytest.raises(NotFound, match=r"^no task with id 99$"):
        await call(p, CI, "tasks", "stop", id=99)


async def test_a_caller_who_may_not_call_learns_nothing_from_param_errors() -> None:
    p = policy({"subjects": ["key:ci"], "actions": ["tasks.start:scan"]})
    with pytest.raises(Forbidden):
        await call(p, WWW, "tasks", "start", type=["not", "a", "string"])
    with pytest.raises(Forbidden):
        await call(p, WWW, "firewall", "allow_port", port="not a number")
    with pytest.raises(ParamsInvalid):  # allowed to start something: gets the schema error
        await call(p, CI, "tasks", "start", type=["x"])
    with pytest.raises(NotFound):  # the module does not exist for anyone
        await call(p, CI, "nope", "x")


@pytest.mark.parametrize(
    ("identity", "subject", "allowed"),
    [
        (WWW, "user:www-data", True),
        (WWW, "uid:33", True),
        (WWW, "group:www-data", True),
        (WWW, "any", True),
        (WWW, "owner", False),
        (ALICE, "owner", True),
        (ALICE, "group:adm", True),
        (CI, "key:ci", True),
        (CI, "any", True),
        (CI, "user:www-data", False),
        (CERT, "cert:backup.example", True),
        (CERT, "any", True),
        (LEGACY, "legacy", True),
        (LEGACY, "any", False),
        (UNSIGNED, "any", False),
        (UNSIGNED, "legacy", False),
        # A TCP identity never matches Unix subjects, whatever fields it carries.
        (Identity(transport="tcp", uid=33, user="www-data", key_id="ci"), "user:www-data", False),
    ],
)
async def test_which_identities_match_which_subjects(identity: Identity, subject: str, allowed: bool) -> None:
    p = policy({"subjects": [subject], "actions": ["admin.uptime"]})
    if allowed:
        assert await call(p, identity, "admin", "uptime") == 1
    else:
        with pytest.raises(Forbidden):
            await call(p, identity, "admin", "uptime")


async def test_code_requirement_can_be_tightened_but_not_loosened() -> None:
    p = policy({"subjects": ["any"], "actions": ["admin.*"]})
    assert await call(p, ROOT, "admin", "reboot") == "rebooting"
    with pytest.raises(
        Forbidden,
        match=r"^admin\.reboot may only be called by uid:0 \(required by the action itself\); "
        r"user:www-data \(uid 33\) is none of them, and a policy rule lifts that only "
        r"with override = true$",
    ):
        await call(p, WWW, "admin", "reboot")
    tighter = policy({"subjects": ["group:www-data"], "actions": ["admin.*"]})
    with pytest.raises(Forbidden):  # root matches the code but not the policy
        await call(tighter, ROOT, "admin", "reboot")


async def test_override_loosens_explicitly_and_is_reported() -> None:
    p = policy(
        {"name": "ops", "subjects": ["key:ci"], "actions": ["admin.reboot"], "override": True},
        {"subjects": ["group:www-data"], "actions": ["admin.*"]},
    )
    assert await call(p, CI, "admin", "reboot") == "rebooting"
    with pytest.raises(Forbidden):  # the override belongs to the ci rule only
        await call(p, WWW, "admin", "reboot")
    assert p.startup_notes() == [
        "policy rule #1 ('ops') has override = true: it lets key:ci call admin.reboot, which its code restricts to uid:0"
    ]


def test_startup_notes_name_patterns_that_match_nothing_and_unknown_users() -> None:
    p = policy(
        {
            "name": "typo",
            "subjects": ["user:no-such-user-xyz", "group:www-data"],
            "actions": ["firewal.*", "tasks.start:nope", "tasks.start:*"],
        },
        {"subjects": ["any"], "actions": ["admin.uptime"], "override": True},
    )
    assert p.startup_notes() == [
        "policy rule #1 ('typo'): action pattern 'firewal.*' matches no action this daemon serves",
        "policy rule #1 ('typo'): action pattern 'tasks.start:nope' matches no action this daemon serves",
        "policy rule #1 ('typo'): subject 'user:no-such-user-xyz' names no user on this host (yet)",
        "policy rule #2 has override = true but loosens no action's own requirement",
    ]


def test_operation_names_for_the_audit() -> None:
    p = policy()
    assert p.operation_name("tasks", "start", {"type": "scan"}) == "tasks.start:scan"
    assert p.operation_name("tasks", "stop", {"id": "2"}) == "tasks.stop:backup"
    assert p.operation_name("tasks", "stop", {"id": 77}) == "tasks.stop:?"
    assert p.operation_name("tasks", "show", {"id": 1}) == "tasks.read"
    assert p.operation_name("firewall", "rules", {}) == "firewall.rules"
    assert p.operation_name("nope", "x", {}) == "nope.x"


async def test_internal_calls_are_the_daemons_own() -> None:
    assert await call(policy(), Identity(transport="internal"), "firewall", "rules") == ["22/tcp"]


async def test_one_cached_decision_serves_every_connection_and_names_the_current_caller() -> None:
    p = policy({"subjects": ["legacy"], "actions": ["admin.uptime"]})
    for port in (5001, 5002):
        caller = Identity(transport="legacy", peer=f"127.0.0.1:{port}")
        assert await call(p, caller, "admin", "uptime") == 1
        with pytest.raises(
            Forbidden, match=rf"^the policy allows legacy caller 127\.0\.0\.1:{port} no firewall\.rules; "
        ):
            await call(p, caller, "firewall", "rules")
    assert len(p._cache) == 2  # one allowed, one denied: not one per connection


async def test_a_typed_task_operation_is_still_decided_by_its_params() -> None:
    p = policy({"subjects": ["key:ci"], "actions": ["tasks.stop:scan"]})
    assert await call(p, CI, "tasks", "stop", id=1) == {"stopped": 1}
    with pytest.raises(Forbidden, match=r"^the policy allows key:ci no tasks\.stop:backup; "):
        await call(p, CI, "tasks", "stop", id=2)  # allowed before validation (some type), refused after
    assert p.operation_depends_on_params(p._registry.get("tasks", "stop"))
    assert not p.operation_depends_on_params(p._registry.get("tasks", "list"))


class Borrower(Module):
    """A module that takes the name "tasks" and its actions' names, as a config command could."""

    name = "tasks"

    @action(read_only=True)
    async def logs(self) -> str:
        return "uid=0(root)"

    @action(read_only=True)
    async def wipe(self) -> str:
        return "wiped"


async def test_task_operations_are_recognised_by_what_they_are_not_by_the_name_tasks() -> None:
    reg = Registry()
    reg.add(Borrower())
    p = Policy(
        PolicyConfig(
            rules=[PolicyRule(subjects=["user:www-data"], actions=["tasks.read", "tasks.logs:scan"])]
        ),
        reg,
        task_types=["scan"],
        task_type_of=task_type_of,
        task_operations=FAKE_TASK_OPERATIONS,
        owner_uid=0,
    )
    dispatcher = Dispatcher(reg, authorize=p.authorize, authorize_params=p.authorize_params)
    for name in ("logs", "wipe"):
        with pytest.raises(
            Forbidden, match=rf"^the policy allows user:www-data \(uid 33\) no tasks\.{name}; "
        ):
            await dispatcher.call(Call("tasks", name, {}, WWW))


async def test_a_task_operation_whose_type_cannot_be_determined_is_denied() -> None:
    class NoId(Module):
        name = "tasks"

        @action(read_only=True)
        async def logs(self, offset: int = 0) -> int:
            return offset

    reg = Registry()
    reg.add(NoId())
    p = Policy(
        PolicyConfig(rules=[PolicyRule(subjects=["user:www-data"], actions=["tasks.logs:scan"])]),
        reg,
        task_types=["scan"],
        task_type_of=task_type_of,
        task_operations={NoId.logs: "tasks.logs"},
        owner_uid=0,
    )
    dispatcher = Dispatcher(reg, authorize=p.authorize, authorize_params=p.authorize_params)
    with pytest.raises(
        Forbidden,
        match=r"^tasks\.logs is decided by the task type, and the type of this call cannot be "
        r"determined; denied to user:www-data \(uid 33\)$",
    ):
        await dispatcher.call(Call("tasks", "logs", {}, WWW))
