"""``Client.acting_for`` / ``AsyncClient.acting_for``: the typed way a delegate acts for a person,
against a real daemon whose ``[[policy.delegates]]`` names the test process (tests/test_daemon_delegation.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pymgr.auth import delegation as daemon_side
from pymgr.client import AsyncClient, Client
from pymgr.client import delegation as client_side
from pymgr.errors import PymgrError
from tests.conftest import Daemon
from tests.test_daemon_delegation import CONFIG, UID


#: The delegate may also call as itself (``own_calls``): the tests below hold the client apart from its views.
OWN_CALLS_CONFIG = CONFIG.replace(
    'roles = ["operators", "auditors"]', 'roles = ["operators", "auditors"]\nown_calls = true'
)


@pytest.fixture
def console(start_daemon: Callable[..., Daemon]) -> Daemon:
    assert OWN_CALLS_CONFIG != CONFIG
    return start_daemon(OWN_CALLS_CONFIG)


def test_the_header_names_are_the_daemons() -> None:
    assert (client_side.HEADER_ON_BEHALF_OF, client_side.HEADER_ROLES) == (
        daemon_side.HEADER_ON_BEHALF_OF,
        daemon_side.HEADER_ROLES,
    )


def test_a_view_acts_for_the_person_and_the_client_stays_itself(console: Daemon) -> None:
    with Client(socket=console.socket) as client:
        alice = client.acting_for("alice", ["operators"])
        me = alice.call("demo", "whoami")
        assert isinstance(me, dict)
        assert (me["person"], me["roles"], me["uid"]) == ("console:alice", ["operators"], UID)
        # The client itself is still the delegate, with its own rules.
        itself = client.call("demo", "whoami")
        assert isinstance(itself, dict) and itself.get("person") is None
        listed = {(m.name, a.name) for m in alice.modules(allowed=True) for a in m.actions if a.allowed}
        assert ("demo", "root_only") not in listed and ("demo", "echo") in listed
        with pytest.raises(PymgrError) as caught:
            client.acting_for("bob").call("demo", "echo")
        assert caught.value.http_status == 403 and "console:bob" in str(caught.value)
        record = alice.start_task("echo", {"word": "hi"})
        assert record.started_by["person"] == "console:alice"


async def test_the_async_client_acts_for_the_person_too(console: Daemon) -> None:
    async with AsyncClient(socket=console.socket) as client:
        me = await client.acting_for("alice", ("auditors",)).call("demo", "whoami")
        assert isinstance(me, dict) and (me["person"], me["roles"]) == ("console:alice", ["auditors"])


@pytest.mark.parametrize(
    ("person", "roles", "message"),
    [
        ("user:root", (), r"^person must be 1 to 64 ASCII letters.*not 'user:root'$"),
        ("a" * 65, (), r"^person must be 1 to 64"),
        ("", (), r"^person must be"),
        ("alice", ("ops", "ops"), r"^each role must be given once, not \['ops', 'ops'\]$"),
        ("alice", ("bad role",), r"^role must be 1 to 64 ASCII letters.*not 'bad role'$"),
    ],
)
def test_a_name_or_role_the_daemon_would_refuse_fails_at_once(
    person: str, roles: tuple[str, ...], message: str
) -> None:
    with Client(socket="/nonexistent.sock") as client, pytest.raises(ValueError, match=message):
        client.acting_for(person, roles)


def test_delegation_over_tcp_is_refused_before_sending() -> None:
    with Client(url="http://127.0.0.1:1") as client, pytest.raises(ValueError, match="Unix socket"):
        client.acting_for("alice")
