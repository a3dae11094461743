"""Actions marked dangerous, against a real console and daemon: the form calls nothing until a
confirmation is posted; after ``reauth_after_s`` the confirmation wants the password, checked and
throttled as a login is; the daemon's audit log says what was called."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import closing
from typing import Any

import httpx

from pymgr.client import Client
from tests.console.conftest import PASSWORDS, Console, form_token, submit_login

PROXY = {"trusted_proxies": ["127.0.0.1"], "proxy_user_header": "X-Remote-User"}


def _calls(console: Console, operation: str) -> list[dict[str, Any]]:
    return [line for line in console.audit() if line["operation"] == operation]


def _ask(http: httpx.Client, action: str, **values: str) -> tuple[httpx.Response, dict[str, str]]:
    """Submit ``demo.ACTION``'s form; the confirmation page and its form's hidden fields."""
    token = form_token(http.get("/actions").text)
    page = http.post(f"/actions/demo/{action}", data={"csrf": token, **values})
    assert page.status_code == 200 and f"Call demo.{action}?" in page.text, page.text
    return page, {"csrf": token, "call": form_token(page.text, "call")}


def test_the_form_only_asks_and_the_confirmation_calls_once(console: Console) -> None:
    with closing(console.login("alice")) as http:
        listing = http.get("/actions").text
        card = listing[listing.index('id="action-demo-reboot"') :]
        assert "dangerous: asks first" in card and "hx-post" not in card[: card.index("</form>")]
        page, confirm = _ask(http, "reboot", reason="kernel update", delay_s="30")
        assert "&#34;kernel update&#34;" in page.text and "<code>30</code>" in page.text
        assert _calls(console, "demo.reboot") == []  # nothing called yet
        assert http.post("/actions/demo/reboot/confirm", data={"call": confirm["call"]}).status_code == 403
        elsewhere = http.post("/actions/demo/reset_password/confirm", data=confirm)
        assert elsewhere.status_code == 409  # a confirmation calls only what it was made for
        assert _calls(console, "demo.reboot") == []
        _, confirm = _ask(http, "reboot", reason="kernel update", delay_s="30")
        done = http.post("/actions/demo/reboot/confirm", data=confirm)
        assert done.status_code == 200 and "would_reboot_in_s" in done.text
        again = http.post("/actions/demo/reboot/confirm", data=confirm)
        assert again.status_code == 409 and "expired or was used already" in again.text
    [line] = _calls(console, "demo.reboot")
    assert line["identity"]["person"] == "console:alice"
    assert line["params"] == {"reason": "kernel update", "delay_s": 30}


def test_a_plain_action_still_calls_at_once(console: Console) -> None:
    with closing(console.login("alice")) as http:
        token = form_token(http.get("/actions").text)
        reply = http.post("/actions/demo/sleep", data={"csrf": token, "seconds": "0"})
        assert reply.status_code == 200 and "slept_s" in reply.text and "Call demo.sleep?" not in reply.text


def test_a_secret_is_not_shown_again_nor_kept_in_a_page(console: Console) -> None:
    secret = "hunter2-very-secret"
    with closing(console.login("alice")) as http:
        page, confirm = _ask(http, "reset_password", account="root", new_password=secret)
        assert secret not in page.text and "(hidden)" in page.text
        done = http.post("/actions/demo/reset_password/confirm", data=confirm)
        assert done.status_code == 200 and secret not in done.text
        assert f'"password_chars": {len(secret)}' in done.text.replace("&#34;", '"')
    [line] = _calls(console, "demo.reset_password")
    assert line["params"] == {"account": "root", "new_password": "[redacted]"}


def test_a_confirmation_expires(console: Console) -> None:
    with closing(console.login("alice")) as http:
        _, confirm = _ask(http, "reboot", reason="later")
        console.clock.now += 301  # confirm_timeout_s
        reply = http.post("/actions/demo/reboot/confirm", data=confirm)
        assert reply.status_code == 409
    assert _calls(console, "demo.reboot") == []


def test_an_old_login_types_the_password_again_and_failures_count(console: Console) -> None:
    with closing(console.login("alice")) as http:
        console.clock.now += 301  # reauth_after_s
        page, confirm = _ask(http, "reboot", reason="old login")
        assert 'name="password" type="password"' in page.text and "type it again" in page.text
        assert http.post("/actions/demo/reboot/confirm", data=confirm).status_code == 401  # no password
        wrong = http.post("/actions/demo/reboot/confirm", data={**confirm, "password": "not-hers"})
        assert wrong.status_code == 401 and "Wrong password." in wrong.text
        assert _calls(console, "demo.reboot") == []
        right = http.post("/actions/demo/reboot/confirm", data={**confirm, "password": PASSWORDS["alice"]})
        assert right.status_code == 200 and "would_reboot_in_s" in right.text
        assert len(_calls(console, "demo.reboot")) == 1
        # typed just now: the next dangerous call asks for a confirmation only
        page, confirm = _ask(http, "reboot", reason="fresh")
        assert 'name="password"' not in page.text
        assert http.post("/actions/demo/reboot/confirm", data=confirm).status_code == 200


def test_failed_confirmations_slow_the_name_down_as_failed_logins_do(console: Console) -> None:
    with closing(console.login("alice")) as http:
        console.clock.now += 301
        _, confirm = _ask(http, "reboot", reason="guessing")
        for _ in range(4):  # login_free_failures = 3, then the first delay (5 s in the tests)
            assert (
                http.post("/actions/demo/reboot/confirm", data={**confirm, "password": "x"}).status_code
                == 401
            )
        right = {**confirm, "password": PASSWORDS["alice"]}
        slowed = http.post("/actions/demo/reboot/confirm", data=right)
        assert slowed.status_code == 429 and "try again in 5 s" in slowed.text
        with console.http() as other:
            assert submit_login(other, "alice", PASSWORDS["alice"]).status_code == 429  # the same count
        console.clock.now += 5.1
        assert http.post("/actions/demo/reboot/confirm", data=right).status_code == 200
    assert len(_calls(console, "demo.reboot")) == 1


def test_a_proxy_session_confirms_without_a_password(start_console: Callable[..., Console]) -> None:
    console = start_console(**PROXY, proxy_default_roles=["operators"])
    with closing(console.http()) as http:
        http.headers["x-remote-user"] = "carol"
        console.clock.now += 3600
        page, confirm = _ask(http, "reboot", reason="by proxy")
        assert 'name="password"' not in page.text and "signed in by the sign-in proxy" in page.text
        assert http.post("/actions/demo/reboot/confirm", data=confirm).status_code == 200
    [line] = _calls(console, "demo.reboot")
    assert line["identity"]["person"] == "console:carol"


def test_a_forced_confirmation_of_an_action_not_offered_is_403(console: Console) -> None:
    with closing(console.login("bob")) as http:
        token = form_token(http.get("/actions").text)
        reply = http.post("/actions/demo/reboot/confirm", data={"csrf": token, "call": "x"})
        assert reply.status_code == 403 and re.search("You may not call demo.reboot", reply.text)


def test_stopping_a_task_after_an_old_login_types_the_password_again(console: Console) -> None:
    with closing(console.login("alice")) as http:
        token = form_token(http.get("/tasks").text)
        started = http.post("/tasks", data={"csrf": token, "type": "scan", "task_id": "7", "duration": "60"})
        task_id = int(started.headers["location"].rsplit("/", 1)[1])
        console.clock.now += 301  # reauth_after_s
        page = http.get(f"/tasks/{task_id}/stop")
        assert 'name="password" type="password"' in page.text and "type it again" in page.text
        stop = {"csrf": form_token(page.text)}
        assert http.post(f"/tasks/{task_id}/stop", data=stop).status_code == 401  # no password
        wrong = http.post(f"/tasks/{task_id}/stop", data={**stop, "password": "not-hers"})
        assert wrong.status_code == 401 and "Wrong password." in wrong.text
        for _ in range(2):  # with the two above, login_free_failures (3) spent, then the first delay
            http.post(f"/tasks/{task_id}/stop", data={**stop, "password": "not-hers"})
        with console.http() as other:
            assert submit_login(other, "alice", PASSWORDS["alice"]).status_code == 429  # counted as logins
        assert not [a for a in console.audit() if (a["module"], a["action"]) == ("tasks", "stop")]
        console.clock.now += 5.1
        right = http.post(f"/tasks/{task_id}/stop", data={**stop, "password": PASSWORDS["alice"]})
        assert right.status_code == 303 and right.headers["location"] == f"/tasks/{task_id}"
        with Client(socket=console.daemon.socket) as daemon:
            assert daemon.wait(task_id, timeout_s=20).state == "stopped"
        assert 'name="password"' not in http.get(f"/tasks/{task_id}/stop").text  # typed just now
