"""The module list marked per caller: ``Policy.allows`` is ``authorize``'s decision, and the list shows it."""

from __future__ import annotations

from typing import Any

import pytest

from pymgr import Identity
from pymgr.auth.listing import list_modules
from pymgr.auth.policy import Policy
from pymgr.errors import Forbidden
from tests.auth.test_policy import ALICE, CI, LEGACY, ROOT, WWW, call, policy, registry

RULES = (
    {"subjects": ["uid:0"], "actions": ["*", "ledger.read"]},
    {
        "subjects": ["group:www-data"],
        "actions": [
            "firewall.*:read",
            "admin.*",
            "tasks.read",
            "tasks.start:scan",
            "tasks.stop:scan",
            "tasks.logs:scan",
        ],
    },
    {"subjects": ["key:ci"], "actions": ["tasks.logs:backup"]},
)
CALLERS = (ROOT, WWW, ALICE, CI, LEGACY)


def by_name(listing: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{m['name']}.{a['name']}": a for m in listing for a in m["actions"]}


#: A task of each type in test_policy's fake task table.
ID_OF = {"scan": 1, "backup": 2}
TYPED = ("tasks.start", "tasks.stop", "tasks.logs")


async def authorized(p: Policy, identity: Identity, qualname: str, task_type: str | None) -> bool:
    """What a call decides: ``authorize`` alone, or with a task type a whole dispatch through both hooks."""
    module, name = qualname.split(".")
    try:
        if task_type is None:
            p.authorize(identity, p._registry.get(module, name))
        elif name == "start":
            await call(p, identity, module, name, type=task_type)
        else:
            await call(p, identity, module, name, id=ID_OF[task_type])
    except Forbidden:
        return False
    return True


@pytest.mark.parametrize("identity", CALLERS, ids=lambda i: i.user or i.key_id or i.transport)
async def test_allows_is_what_a_call_decides_for_every_action_and_type(identity: Identity) -> None:
    p = policy(*RULES)
    for qualname in by_name(p._registry.describe()):
        spec = p._registry.get(*qualname.split("."))
        assert p.allows(identity, spec) == await authorized(p, identity, qualname, None), qualname
        for task_type in ID_OF if qualname in TYPED else ():
            expected = await authorized(p, identity, qualname, task_type)
            assert p.allows(identity, spec, task_type) == expected, (qualname, task_type)


def test_each_action_is_marked_for_the_caller_asking() -> None:
    p = policy(*RULES)
    www = by_name(list_modules(p._registry, p, WWW))
    assert www["firewall.rules"]["allowed"] and not www["firewall.allow_port"]["allowed"]
    # admin.* is in the rule, but reboot's own allow=["uid:0"] still holds.
    assert www["admin.uptime"]["allowed"] and not www["admin.reboot"]["allowed"]
    assert www["tasks.list"]["allowed"] and www["tasks.show"]["allowed"]
    for typed in ("tasks.start", "tasks.stop", "tasks.logs"):
        assert www[typed]["allowed"] and www[typed]["task_types"] == {"scan": True, "backup": False}
    assert "task_types" not in www["tasks.list"]
    assert all(a["allowed"] for a in by_name(list_modules(p._registry, p, ROOT)).values())
    ci = by_name(list_modules(p._registry, p, CI))
    assert ci["tasks.logs"] == {**ci["tasks.logs"], "allowed": True, "task_types": {"backup": True}}
    assert not ci["tasks.start"]["allowed"] and not ci["tasks.list"]["allowed"]


@pytest.mark.parametrize("identity", (CI, ALICE, LEGACY), ids=lambda i: i.key_id or i.user or i.transport)
def test_a_caller_who_may_not_read_the_types_learns_no_name_it_may_not_use(identity: Identity) -> None:
    p = policy(*RULES)
    listing = by_name(list_modules(p._registry, p, identity))
    assert not listing["tasks.list"]["allowed"]
    for typed in TYPED:
        assert all(listing[typed]["task_types"].values()), (typed, listing[typed]["task_types"])


def test_only_allowed_drops_actions_types_and_empty_modules() -> None:
    p = policy(*RULES)
    ci = list_modules(p._registry, p, CI, only_allowed=True)
    assert [(m["name"], [a["name"] for a in m["actions"]]) for m in ci] == [("tasks", ["logs"])]
    assert ci[0]["actions"][0]["task_types"] == {"backup": True}
    www = by_name(list_modules(p._registry, p, WWW, only_allowed=True))
    assert sorted(www) == [
        "admin.uptime",
        "firewall.rules",
        "tasks.list",
        "tasks.logs",
        "tasks.show",
        "tasks.start",
        "tasks.stop",
    ]
    assert www["tasks.start"]["task_types"] == {"scan": True}
    assert list_modules(p._registry, p, LEGACY, only_allowed=True) == []


def test_the_list_keeps_what_describe_says() -> None:
    p = policy(*RULES)
    described = by_name(p._registry.describe())
    for name, marked in by_name(list_modules(p._registry, p, WWW)).items():
        assert {k: v for k, v in marked.items() if k not in ("allowed", "task_types")} == described[name]


def test_without_a_policy_everything_is_allowed() -> None:
    reg = registry()
    for only_allowed in (False, True):
        listing = list_modules(reg, None, LEGACY, only_allowed=only_allowed)
        assert by_name(listing).keys() == by_name(reg.describe()).keys()
        assert all(a["allowed"] and "task_types" not in a for a in by_name(listing).values())
