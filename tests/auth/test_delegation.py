"""Delegation: who may act for whom, the headers' checks, and what the policy sees of a person."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pymgr import Identity, Module, action
from pymgr.auth.delegation import NO_DELEGATES, Delegation
from pymgr.auth.policy import Policy, PolicyConfig, describe_identity
from pymgr.config import ConfigError, load_config
from pymgr.core.registry import Registry
from pymgr.errors import Forbidden, MalformedRequest

CONSOLE = Identity(transport="unix", uid=999, gid=999, pid=7, user="pymgr-console", groups=("pymgr-console",))
ROOT = Identity(transport="unix", uid=0, gid=0, pid=8, user="root", groups=("root",))
SIGNED = Identity(transport="tcp", key_id="ci", peer="10.0.0.5:4000")

POLICY = {
    "delegates": [
        {"subject": "user:pymgr-console", "namespace": "console", "roles": ["operators", "auditors"]}
    ],
    "rules": [
        {"name": "root", "subjects": ["uid:0", "user:root", "owner", "any"], "actions": ["*"]},
        {"name": "the console itself", "subjects": ["user:pymgr-console"], "actions": ["firewall.*"]},
        {"name": "alice", "subjects": ["console:alice"], "actions": ["firewall.rules"]},
        {"name": "operators", "subjects": ["role:operators"], "actions": ["firewall.allow_port"]},
    ],
}


class Firewall(Module):
    name = "firewall"

    @action
    async def allow_port(self, port: int) -> int:
        return port

    @action(read_only=True)
    async def rules(self) -> list[str]:
        return ["22/tcp"]

    @action(allow=["uid:0"])
    async def flush(self) -> str:
        return "flushed"


def policy(config: dict[str, object] = POLICY) -> Policy:
    registry = Registry()
    registry.add(Firewall())
    return Policy(PolicyConfig.model_validate(config), registry, owner_uid=0)


def headers(name: str | None = None, roles: str | None = None) -> list[tuple[bytes, bytes]]:
    found = [(b"host", b"pymgr")]
    if name is not None:
        found.append((b"x-pymgr-on-behalf-of", name.encode("utf-8")))
    if roles is not None:
        found.append((b"x-pymgr-roles", roles.encode("utf-8")))
    return found


def person(name: str, roles: str | None = None, caller: Identity = CONSOLE) -> Identity:
    return policy().delegation.resolve(caller, headers(name, roles))


def test_a_request_without_the_headers_is_the_caller_itself() -> None:
    assert policy().delegation.resolve(CONSOLE, headers()) is CONSOLE
    assert NO_DELEGATES.resolve(ROOT, headers()) is ROOT


def test_a_delegate_acts_for_a_person_of_its_namespace_with_the_roles_it_may_assert() -> None:
    alice = person("alice", " operators ,auditors")
    assert (alice.person, alice.roles) == ("console:alice", ("operators", "auditors"))
    assert (alice.uid, alice.user, alice.pid) == (999, "pymgr-console", 7)  # the delegate, kept beside
    assert describe_identity(alice) == (
        "console:alice role:operators role:auditors (through the delegate user:pymgr-console (uid 999))"
    )
    assert person("bob", "").roles == ()


def test_the_policy_judges_the_person_never_the_delegate_root_or_any() -> None:
    p = policy()
    specs = {name: p._registry.get("firewall", name) for name in ("allow_port", "rules", "flush")}
    alice, bob, carol = person("alice"), person("bob", "operators"), person("root")
    assert p.allows(alice, specs["rules"]) and not p.allows(alice, specs["allow_port"])
    assert p.allows(bob, specs["allow_port"]) and not p.allows(bob, specs["rules"])
    # "root" in the console's namespace is console:root: not user:root, uid:0, owner or any.
    assert not any(p.allows(carol, spec) for spec in specs.values())
    # The code's own requirement (uid:0) is never a person's, whatever the rules say.
    assert not p.allows(person("alice", "operators,auditors"), specs["flush"])
    # The console's own rule does not leak to the people it acts for.
    assert not p.allows(alice, specs["allow_port"])
    with pytest.raises(Forbidden, match=r"^the policy allows console:alice \(through the delegate "):
        p.authorize(alice, specs["allow_port"])


def own_calls(allowed: bool) -> Policy:
    return policy({**POLICY, "delegates": [{**POLICY["delegates"][0], "own_calls": allowed}]})  # type: ignore[index]


def test_a_delegates_call_without_a_person_is_refused_unless_its_entry_says_own_calls() -> None:
    spec = policy()._registry.get("firewall", "allow_port")
    # Its own rule ("the console itself") and `any` ("root") match it: own_calls = false still refuses.
    for p in (policy(), own_calls(False)):
        assert not p.allows(CONSOLE, spec)
        with pytest.raises(
            Forbidden,
            match=r"^user:pymgr-console \(uid 999\) is a delegate \(\[\[policy.delegates\]\], namespace "
            r"'console'\) and calls only for a person: send X-Pymgr-On-Behalf-Of, or set own_calls = true ",
        ):
            p.authorize(CONSOLE, spec)
        assert p.allows(person("bob", "operators"), spec)  # its people are unaffected
        assert p.allows(ROOT, spec)  # and so is everyone else
    assert own_calls(True).allows(CONSOLE, spec)  # the rules naming it, and `any`, apply to it then


def test_the_decision_cache_tells_people_and_roles_apart() -> None:
    p = policy()
    spec = p._registry.get("firewall", "allow_port")
    assert p.allows(person("bob", "operators"), spec)
    assert not p.allows(person("bob"), spec)
    assert not p.allows(person("alice"), spec)


@pytest.mark.parametrize(
    ("caller", "name", "roles", "error", "message"),
    [
        (ROOT, "alice", None, Forbidden, r"^user:root \(uid 0\) is no delegate: it may not act on behalf"),
        (SIGNED, "alice", None, Forbidden, r"^X-Pymgr-On-Behalf-Of is served on the Unix socket only"),
        (
            CONSOLE,
            "alice",
            "admins",
            Forbidden,
            r"^user:pymgr-console \(uid 999\) may not assert role 'admins'; ",
        ),
        (CONSOLE, None, "operators", MalformedRequest, r"^X-Pymgr-Roles without X-Pymgr-On-Behalf-Of"),
        # Either header from a caller that is no delegate is 403, roles alone included: who asks comes first.
        (
            ROOT,
            None,
            "operators",
            Forbidden,
            r"^user:root \(uid 0\) is no delegate: it may not act on behalf",
        ),
        (SIGNED, None, "operators", Forbidden, r"^X-Pymgr-On-Behalf-Of is served on the Unix socket only"),
        (CONSOLE, "user:root", None, MalformedRequest, r"^X-Pymgr-On-Behalf-Of 'user:root' is not a person"),
        (CONSOLE, "../root", None, MalformedRequest, r"^X-Pymgr-On-Behalf-Of '\.\./root' is not a person"),
        (CONSOLE, ".hidden", None, MalformedRequest, r"is not a person's name"),
        (CONSOLE, "al ice", None, MalformedRequest, r"is not a person's name"),
        (CONSOLE, "alicé", None, MalformedRequest, r"is not a person's name"),
        (CONSOLE, "alice\t", None, MalformedRequest, r"is not a person's name"),
        (CONSOLE, "alice\n", None, MalformedRequest, r"is not a person's name"),
        (CONSOLE, "alice", "operators\n", MalformedRequest, r"is not a role name"),
        (CONSOLE, "", None, MalformedRequest, r"is not a person's name"),
        (
            CONSOLE,
            "a" * 65,
            None,
            MalformedRequest,
            r"is 65 characters, more than max_person_name_length=64$",
        ),
        (CONSOLE, "alice", "operators,,auditors", MalformedRequest, r"holds '', which is not a role name"),
        (CONSOLE, "alice", "operators,operators", MalformedRequest, r"role 'operators' is given twice$"),
        (
            CONSOLE,
            "alice",
            "role:operators",
            MalformedRequest,
            r"holds 'role:operators', which is not a role",
        ),
        (CONSOLE, "alice", "x" * 5000, MalformedRequest, r"holds 'x{64}', which is not a role name"),
    ],
)
def test_refusals_say_why(
    caller: Identity, name: str | None, roles: str | None, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        person(name, roles, caller) if name is not None else policy().delegation.resolve(
            caller, headers(None, roles)
        )


def test_the_name_length_limit_both_sides() -> None:
    config = {**POLICY, "max_person_name_length": 8}
    assert policy(config).delegation.resolve(CONSOLE, headers("a" * 8)).person == "console:" + "a" * 8
    with pytest.raises(MalformedRequest, match=r"is 9 characters, more than max_person_name_length=8$"):
        policy(config).delegation.resolve(CONSOLE, headers("a" * 9))


def test_each_header_once() -> None:
    twice = [*headers("alice"), (b"x-pymgr-on-behalf-of", b"bob")]
    with pytest.raises(MalformedRequest, match=r"^X-Pymgr-On-Behalf-Of appears more than once"):
        policy().delegation.resolve(CONSOLE, twice)
    twice = [*headers("alice", "operators"), (b"x-pymgr-roles", b"auditors")]
    with pytest.raises(MalformedRequest, match=r"^X-Pymgr-Roles appears more than once"):
        policy().delegation.resolve(CONSOLE, twice)


def test_without_delegates_every_delegation_is_refused() -> None:
    with pytest.raises(Forbidden, match=r"is no delegate"):
        NO_DELEGATES.resolve(CONSOLE, headers("alice"))
    assert isinstance(Delegation(PolicyConfig(), 0), Delegation)


@pytest.mark.parametrize(
    ("policy_toml", "message"),
    [
        (
            '[[policy.delegates]]\nsubject = "group:www-data"\nnamespace = "console"\n',
            r"a delegate is one local user: user:NAME or uid:N, not 'group:www-data'",
        ),
        (
            '[[policy.delegates]]\nsubject = "key:ci"\nnamespace = "console"\n',
            r"a delegate is one local user",
        ),
        (
            '[[policy.delegates]]\nsubject = "user:c"\nnamespace = "user"\n',
            r"namespace 'user' is a word of the policy itself",
        ),
        ('[[policy.delegates]]\nsubject = "user:c"\nnamespace = "Con sole"\n', r"should match pattern"),
        (
            '[[policy.delegates]]\nsubject = "user:c"\nnamespace = "console"\nroles = ["a b"]\n',
            r"should match pattern",
        ),
        (
            '[[policy.delegates]]\nsubject = "user:a"\nnamespace = "console"\n\n'
            '[[policy.delegates]]\nsubject = "user:b"\nnamespace = "console"\n',
            r"namespace 'console' is given to two delegates",
        ),
        (
            '[[policy.rules]]\nsubjects = ["consol:alice"]\nactions = ["*"]\n',
            r"^  policy\.rules\.0\.subjects\.0: Value error, unknown subject 'consol:alice'; .* \(line 2\)$",
        ),
        ("[policy]\nmax_person_name_length = 0\n", r"max_person_name_length"),
        ("[policy]\nmax_person_name_length = 257\n", r"max_person_name_length"),
    ],
)
def test_bad_delegates_stop_start_up(tmp_path: Path, policy_toml: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(policy_toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert re.search(message, str(info.value), re.M), str(info.value)


def test_a_rule_may_name_the_people_of_a_declared_namespace(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[policy.delegates]]\nsubject = "user:pymgr-console"\nnamespace = "console"\nroles = ["operators"]\n\n'
        '[[policy.rules]]\nsubjects = ["console:alice", "role:operators"]\nactions = ["*"]\n'
    )
    assert load_config(path).policy.namespaces() == {"console"}
    with pytest.raises(ValueError, match=r"rule #1: unknown subject 'web:alice'"):
        PolicyConfig.model_validate({"rules": [{"subjects": ["web:alice"], "actions": ["*"]}]})


def test_rules_naming_a_delegates_own_user_are_a_start_up_note() -> None:
    # The delegate as root (uid:0 by name, its uid and its group all name it): every form is found.
    config = {
        "delegates": [{"subject": "user:root", "namespace": "console"}],
        "rules": [
            {"name": "by uid", "subjects": ["uid:0"], "actions": ["firewall.*"]},
            {"name": "by group", "subjects": ["group:root"], "actions": ["firewall.*"]},
            {"name": "people", "subjects": ["console:alice"], "actions": ["firewall.*"]},
        ],
    }
    notes = [n for n in policy(config).startup_notes() if "delegate" in n]
    assert notes == [
        "policy rule #1 ('by uid') names uid:0, the delegate user:root itself: its calls without a person are "
        "refused (own_calls = false), so this rule gives it nothing",
        "policy rule #2 ('by group') names group:root, the delegate user:root itself: its calls without a "
        "person are refused (own_calls = false), so this rule gives it nothing",
    ]
    config["delegates"] = [{"subject": "uid:0", "namespace": "console", "own_calls": True}]
    [first, _] = [n for n in policy(config).startup_notes() if "delegate" in n]
    assert first.startswith(
        "policy rule #1 ('by uid') names uid:0, the delegate uid:0 itself (own_calls = true): "
    )
    assert first.endswith("give a delegate a user of its own and its people rules of their own")
