"""Sign-in, sessions, CSRF and the security headers, against a real console and daemon."""

from __future__ import annotations

from contextlib import closing

from tests.console.conftest import PASSWORDS, Console, form_token, submit_login


def test_a_wrong_password_and_an_unknown_name_get_the_same_answer(console: Console) -> None:
    with console.http() as http:
        wrong = submit_login(http, "alice", "not-her-password")
        unknown = submit_login(http, "mallory", "not-her-password")
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong name or password." in wrong.text and "Wrong name or password." in unknown.text
    assert "pymgr_console" not in wrong.headers.get("set-cookie", "")


def test_the_right_password_opens_a_session_in_a_strict_httponly_cookie(console: Console) -> None:
    with console.http() as http:
        reply = submit_login(http, "alice", PASSWORDS["alice"])
        assert reply.status_code == 303 and reply.headers["location"] == "/tasks"
        cookie = next(c for c in reply.headers.get_list("set-cookie") if c.startswith("pymgr_console="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
        page = http.get("/tasks")
        assert page.status_code == 200 and "alice" in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert (
            page.headers["referrer-policy"] == "same-origin" and page.headers["cache-control"] == "no-store"
        )
        assert "<script>" not in page.text and " on" + "click=" not in page.text


def test_failures_lock_a_name_out_with_growing_delays_whatever_the_password(console: Console) -> None:
    with console.http() as http:
        for _ in range(3):
            assert submit_login(http, "alice", "wrong").status_code == 401
        assert submit_login(http, "alice", "wrong").status_code == 401  # the 4th: the first delay starts
        locked = submit_login(http, "alice", PASSWORDS["alice"])
        assert locked.status_code == 429 and "try again in 5 s" in locked.text
        console.clock.now += 5.1
        assert submit_login(http, "alice", "wrong").status_code == 401  # the delay doubles
        console.clock.now += 5.1
        assert submit_login(http, "alice", PASSWORDS["alice"]).status_code == 429
        console.clock.now += 5.0
        assert submit_login(http, "alice", PASSWORDS["alice"]).status_code == 303


def test_an_unknown_name_is_locked_out_like_a_known_one(console: Console) -> None:
    with console.http() as http:
        for _ in range(4):
            assert submit_login(http, "mallory", "wrong").status_code == 401
        assert submit_login(http, "mallory", "wrong").status_code == 429


def test_an_address_trying_many_names_is_slowed_too(console: Console) -> None:
    with console.http() as http:
        for n in range(4):
            assert submit_login(http, f"name{n}", "wrong").status_code == 401
        # bob has not failed once, but this address has.
        assert submit_login(http, "bob", PASSWORDS["bob"]).status_code == 429


def test_a_post_without_the_csrf_token_or_from_another_site_is_refused(console: Console) -> None:
    with closing(console.login("alice")) as http:
        token = form_token(http.get("/tasks").text)
        start = {"type": "scan", "task_id": "1", "duration": "0.1"}
        assert http.post("/tasks", data=start).status_code == 403
        assert http.post("/tasks", data={**start, "csrf": "forged"}).status_code == 403
        cross = http.post("/tasks", data={**start, "csrf": token}, headers={"sec-fetch-site": "cross-site"})
        assert cross.status_code == 403
        other = http.post("/tasks", data={**start, "csrf": token}, headers={"origin": "http://evil.example"})
        assert other.status_code == 403
        assert http.get("/tasks").text.count('<tr id="task-') == 0  # nothing started
        assert http.post("/tasks", data={**start, "csrf": token}).status_code == 303


def test_the_login_form_needs_its_own_token(console: Console) -> None:
    with console.http() as http:
        reply = http.post("/login", data={"name": "alice", "password": PASSWORDS["alice"]})
        assert reply.status_code == 403 and "pymgr_console=" not in reply.headers.get("set-cookie", "")


def test_a_session_past_its_idle_or_absolute_timeout_is_sent_to_login(start_console) -> None:  # type: ignore[no-untyped-def]
    console = start_console(session_idle_s=60, session_absolute_s=300)
    with closing(console.login("alice")) as http:
        console.clock.now += 59
        assert http.get("/tasks").status_code == 200
        console.clock.now += 61
        reply = http.get("/tasks")
        assert reply.status_code == 303 and reply.headers["location"] == "/login?next=/tasks"
    with closing(console.login("alice")) as http:
        for _ in range(6):
            console.clock.now += 50
            assert http.get("/status").status_code == 200
        console.clock.now += 50
        assert http.get("/status").status_code == 303


def test_logout_ends_the_session_on_the_server(console: Console) -> None:
    with closing(console.login("alice")) as http:
        cookie = http.cookies["pymgr_console"]
        token = form_token(http.get("/tasks").text)
        assert http.post("/logout", data={"csrf": token}).status_code == 303
    with console.http() as other:
        other.cookies.set("pymgr_console", cookie)
        assert other.get("/tasks").status_code == 303


def test_a_host_name_not_allowed_is_refused_against_dns_rebinding(console: Console) -> None:
    with console.http() as http:
        assert http.get("/login", headers={"host": "evil.example:8765"}).status_code == 400
        assert http.get("/login", headers={"host": "localhost"}).status_code == 200


def test_a_body_over_the_limit_is_refused_before_it_is_read(start_console) -> None:  # type: ignore[no-untyped-def]
    console = start_console(max_body_bytes=4096)
    with console.http() as http:
        big = http.post(
            "/login",
            content=b"name=" + b"a" * 5000,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert big.status_code == 413 and big.text == "a request body is at most 4096 bytes\n"
        chunked = http.post(
            "/login",
            content=iter([b"name=", b"a" * 5000]),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert chunked.status_code == 413
        assert submit_login(http, "alice", PASSWORDS["alice"]).status_code == 303
