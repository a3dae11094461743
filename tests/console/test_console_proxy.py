"""Sign-in by a reverse proxy's user header, against a real console and daemon: believed from a trusted
proxy only (the test's 127.0.0.1), refused and logged from anyone else, odd names refused, ignored
when the console is not told about it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from pymgr.console.config import ConsoleConfigError, load_config
from tests.conftest import wait_for
from tests.console.conftest import Console, form_token

PROXY = {"trusted_proxies": ["127.0.0.1"], "proxy_user_header": "X-Remote-User"}


def test_a_trusted_proxy_signs_the_person_in_and_the_daemon_audits_them(
    start_console: Callable[..., Console],
) -> None:
    console = start_console(**PROXY, proxy_default_roles=["operators"])
    with closing(console.http()) as http:
        http.headers["x-remote-user"] = "carol@example.com"  # not in the users file: the default roles
        page = http.get("/actions")
        assert page.status_code == 200 and "carol@example.com" in page.text and "demo.echo" in page.text
        assert any(c.startswith("pymgr_console=") for c in page.headers.get_list("set-cookie"))
        token = form_token(page.text)
        again = http.get("/actions")  # the same session while the proxy names the same person
        assert form_token(again.text) == token and "set-cookie" not in again.headers
        assert http.post("/actions/demo/echo", data={"marker": "by-proxy"}).status_code == 403  # no token
        called = http.post("/actions/demo/echo", data={"csrf": token})
        assert called.status_code == 200, called.text
        assert http.get("/login").headers["location"] == "/tasks"  # no login form for them
    line = wait_for(lambda: next((a for a in console.audit() if a["operation"] == "demo.echo"), None))
    assert line["identity"]["person"] == "console:carol@example.com"
    assert line["identity"]["roles"] == ["operators"] and line["outcome"] == "ok"


def test_a_person_in_the_users_file_keeps_their_roles_there(start_console: Callable[..., Console]) -> None:
    console = start_console(**PROXY, proxy_default_roles=["operators"])
    with closing(console.http()) as http:
        page = http.get("/actions", headers={"x-remote-user": "bob"})  # bob: a viewer
        assert page.status_code == 200 and "demo.whoami" in page.text and "demo.echo" not in page.text


def test_roles_from_the_proxy_are_those_listed_in_proxy_roles(start_console: Callable[..., Console]) -> None:
    console = start_console(
        **PROXY, proxy_roles_header="X-Remote-Groups", proxy_roles=["viewers", "operators"]
    )
    with closing(console.http()) as http:
        http.headers.update({"x-remote-user": "dave", "x-remote-groups": "wheel, viewers,/org/odd"})
        token = form_token(http.get("/actions").text)
        me = http.post("/actions/demo/whoami", data={"csrf": token}, headers={"hx-request": "true"})
        assert me.status_code == 200 and "console:dave" in me.text
        assert "&#34;roles&#34;: [\n    &#34;viewers&#34;\n  ]" in me.text
        http.headers["x-remote-groups"] = "operators"  # the proxy decides at every request
        assert "demo.echo" in http.get("/actions").text


def test_the_audit_link_follows_the_roles_the_proxy_sends(start_console: Callable[..., Console]) -> None:
    console = start_console(
        **PROXY, proxy_roles_header="X-Remote-Groups", proxy_roles=["viewers", "auditors"]
    )
    with closing(console.http()) as http:
        http.headers.update({"x-remote-user": "dave", "x-remote-groups": "viewers"})
        assert 'href="/audit"' not in http.get("/tasks").text
        http.headers["x-remote-groups"] = "viewers, auditors"  # the same session, other roles
        assert 'href="/audit"' in http.get("/tasks").text
        http.headers["x-remote-groups"] = "viewers"
        assert 'href="/audit"' not in http.get("/tasks").text


def test_the_roles_header_sent_twice_is_refused_and_logged_never_merged(
    start_console: Callable[..., Console], caplog: pytest.LogCaptureFixture
) -> None:
    console = start_console(
        **PROXY, proxy_roles_header="X-Remote-Groups", proxy_roles=["viewers", "operators"]
    )
    caplog.set_level(logging.WARNING, "pymgr.console")
    with closing(console.http()) as http:
        twice = [("x-remote-user", "dave"), ("x-remote-groups", "viewers"), ("x-remote-groups", "operators")]
        reply = http.get("/actions", headers=twice)
        assert reply.status_code == 400 and "X-Remote-Groups 2 times" in reply.text
        assert "demo.echo" not in reply.text and "set-cookie" not in reply.headers
        once = http.get("/actions", headers=twice[:2])
        assert once.status_code == 200 and "demo.whoami" in once.text and "demo.echo" not in once.text
    assert "refused a request from the proxy 127.0.0.1 with X-Remote-Groups given 2 times" in caplog.text


def test_the_header_from_an_untrusted_peer_is_refused_and_logged(
    start_console: Callable[..., Console], caplog: pytest.LogCaptureFixture
) -> None:
    console = start_console(trusted_proxies=["10.0.0.0/8"], proxy_user_header="X-Remote-User")
    caplog.set_level(logging.WARNING, "pymgr.console")
    with closing(console.login("alice")) as http:  # even with a session of a password login
        assert http.get("/tasks").status_code == 200
        spoofed = http.get("/tasks", headers={"x-remote-user": "alice", "x-forwarded-for": "10.1.2.3"})
        assert spoofed.status_code == 403 and "believed from the sign-in proxy only" in spoofed.text
        assert "set-cookie" not in spoofed.headers
        assert http.get("/static/console.css", headers={"x-remote-user": "bob"}).status_code == 403
    assert (
        "refused a request with X-Remote-User from 127.0.0.1, which is not in trusted_proxies" in caplog.text
    )


def test_an_odd_name_or_the_header_given_twice_is_refused(start_console: Callable[..., Console]) -> None:
    console = start_console(**PROXY)
    with closing(console.http()) as http:
        for name in ["../root", "alice bob", "-alice", "a" * 65, "élodie", ""]:
            reply = http.get("/tasks", headers={"x-remote-user": name.encode()})
            assert reply.status_code == 400 and "does not accept" in reply.text, (name, reply.text)
            assert "set-cookie" not in reply.headers
        twice = http.get("/tasks", headers=[("x-remote-user", "alice"), ("x-remote-user", "bob")])
        assert twice.status_code == 400 and "2 times" in twice.text


def test_a_proxy_session_is_believed_only_with_its_header(start_console: Callable[..., Console]) -> None:
    console = start_console(**PROXY)
    with closing(console.http()) as http:
        assert http.get("/tasks", headers={"x-remote-user": "alice"}).status_code == 200
        assert http.cookies.get("pymgr_console")  # the session's cookie, without the header:
        assert http.get("/tasks").headers["location"] == "/login?next=/tasks"
        # another name from the proxy is another person: a session of their own
        page = http.get("/tasks", headers={"x-remote-user": "bob"})
        assert page.status_code == 200 and '<span class="who">bob</span>' in page.text


def test_requests_without_a_cookie_reuse_the_persons_session_and_sign_no_one_out(
    start_console: Callable[..., Console],
) -> None:
    console = start_console(**PROXY, max_sessions=4)
    with closing(console.login("bob")) as bob:
        tokens = set()
        for _ in range(2 * 4):  # each a new client: no cookie
            with console.http() as http:
                page = http.get("/tasks", headers={"x-remote-user": "alice"})
                assert page.status_code == 200 and "set-cookie" in page.headers
                tokens.add(form_token(page.text))
        assert bob.get("/tasks").status_code == 200  # bob's password session is still in force
        assert len(tokens) == 1  # alice's one session: one CSRF token
    assert len(console.app.state.console.sessions) == 2


def test_signing_out_is_the_proxys(start_console: Callable[..., Console]) -> None:
    console = start_console(**PROXY, proxy_logout_url="/oauth2/sign_out")
    with closing(console.http()) as http:
        http.headers["x-remote-user"] = "alice"
        token = form_token(http.get("/tasks").text)
        out = http.post("/logout", data={"csrf": token})
        assert out.status_code == 200 and "signing out is the proxy's" in out.text
        assert 'href="/oauth2/sign_out"' in out.text


def test_without_proxy_user_header_the_header_means_nothing(console: Console) -> None:
    with closing(console.http()) as http:
        reply = http.get("/tasks", headers={"x-remote-user": "alice"})
        assert reply.status_code == 303 and reply.headers["location"] == "/login?next=/tasks"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('proxy_user_header = "X-Remote-User"', "proxy_user_header needs trusted_proxies"),
        ('trusted_proxies = ["::1"]\nproxy_user_header = "X Remote"', "a header name is letters"),
        (
            'trusted_proxies = ["::1"]\nproxy_user_header = "A"\nproxy_roles_header = "B"',
            "proxy_roles_header needs proxy_roles",
        ),
        ('proxy_logout_url = "/x"', "need proxy_user_header"),
        ('proxy_default_roles = ["a b"]', "a role is 1 to 64"),
        ("reauth_after_s = 0", "reauth_after_s: Input should be greater than 0"),
    ],
)
def test_proxy_settings_that_cannot_work_are_config_errors(
    tmp_path: Path, settings: str, message: str
) -> None:
    path = tmp_path / "console.toml"
    path.write_text(f"[console]\n{settings}\n")
    with pytest.raises(ConsoleConfigError, match=message):
        load_config(path)


def test_forwarded_headers_from_a_trusted_proxy_make_the_cookies_secure(
    start_console: Callable[..., Console],
) -> None:
    https = {"x-forwarded-proto": "https", "x-forwarded-for": "10.1.2.3"}
    trusted = start_console(**PROXY)
    with closing(trusted.http()) as http:
        assert "Secure" in http.get("/login", headers=https).headers["set-cookie"]
        page = http.get("/tasks", headers={**https, "x-remote-user": "alice"})
        cookie = page.headers["set-cookie"]
        assert cookie.startswith("__Host-pymgr_console=") and "Secure" in cookie


def test_forwarded_headers_from_an_untrusted_peer_mean_nothing(start_console: Callable[..., Console]) -> None:
    https = {"x-forwarded-proto": "https", "x-forwarded-for": "10.1.2.3"}
    untrusted = start_console(trusted_proxies=["10.0.0.0/8"])
    with closing(untrusted.http()) as http:
        assert "Secure" not in http.get("/login", headers=https).headers["set-cookie"]
