"""The console in a real headless browser: Debian's chromium driven by Playwright (never a downloaded
browser), against a real daemon and a real console on a temporary socket and an ephemeral port.

One browser for the module, a fresh context (cookies) per test. Screenshots of every page at desktop
(1280) and phone (375) width go into ``$PYMGR_CONSOLE_SHOTS`` when set (``docs/console/`` is made so),
else into a temporary directory; at 375 px no page scrolls sideways.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pymgr.client import Client, Event
from tests.conftest import wait_for
from tests.console.conftest import PASSWORDS, Console
from tests.tasks.taskhelpers import gone

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or shutil.which("chromium") is None,
    reason="Debian's chromium is missing: make test installs it (SYSTEM_TOOLS)",
)

#: Desktop and phone (375 px: the narrowest common phone) viewports.
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 375, "height": 740}}
#: The longest wait for something the page shows (a scan's end, a line of its log): generous, as
#: a loaded machine (make test runs on several workers) slows the browser, the daemon and the scan.
SHOWN_MS = 60_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # As root, chromium refuses to start without --no-sandbox (its sandbox needs an unprivileged user).
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wanted = os.environ.get("PYMGR_CONSOLE_SHOTS")
    return Path(wanted) if wanted else tmp_path_factory.mktemp("console-shots")


@pytest.fixture
def page(browser: Any, start_console: Callable[..., Console]) -> Iterator[Any]:
    """A page of its own context (no cookies of another test); it fails the test on a CSP refusal.

    It needs ``start_console`` so that it closes (and with it its event streams) before the console
    stops: a console waits for its open streams when it stops.
    """
    context = browser.new_context(viewport=VIEWPORTS["desktop"], accept_downloads=True)
    page = context.new_page()
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    yield page
    context.close()
    assert not refused, refused


def shoot(page: Any, shots: Path, name: str) -> None:
    """The page at desktop and at phone width; at 375 px it must not scroll sideways."""
    for width, viewport in VIEWPORTS.items():
        page.set_viewport_size(viewport)
        page.screenshot(path=shots / f"{name}-{width}.png", full_page=True)
        if width == "phone":
            scroll = page.evaluate("document.scrollingElement.scrollWidth")
            assert scroll <= viewport["width"], f"{name} scrolls sideways at 375 px: {scroll} px wide"
    page.set_viewport_size(VIEWPORTS["desktop"])


def sign_in(page: Any, console: Console, name: str = "alice", password: str | None = None) -> None:
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(PASSWORDS[name] if password is None else password)
    page.get_by_role("button", name="Sign in").click()


def signed_in(page: Any, console: Console, name: str = "alice", path: str = "/tasks") -> None:
    page.goto(f"{console.url}{path}")
    assert page.url.startswith(f"{console.url}/login")
    sign_in(page, console, name)
    page.wait_for_url(f"{console.url}{path}")


def start_scan(console: Console, **params: Any) -> int:
    """A scan started for alice as the console would, without its form (tests of other things)."""
    with Client(socket=console.daemon.socket) as client:
        alice = client.acting_for("alice", ["operators"])
        return alice.start_task("scan", {"task_id": 5, **params}).id


def test_a_wrong_password_is_refused_and_the_right_one_signs_in(
    page: Any, console: Console, shots: Path
) -> None:
    page.goto(f"{console.url}/tasks")
    assert page.url == f"{console.url}/login?next=/tasks"
    shoot(page, shots, "login")
    sign_in(page, console, password="not-her-password")
    page.get_by_role("alert").filter(has_text="Wrong name or password.").wait_for()
    assert page.url.startswith(f"{console.url}/login")
    sign_in(page, console)
    page.wait_for_url(f"{console.url}/tasks")
    assert page.locator(".who").inner_text() == "alice"


def test_repeated_failures_lock_the_name_out_and_the_page_says_so(page: Any, console: Console) -> None:
    page.goto(f"{console.url}/login")
    for _ in range(4):  # login_free_failures (3) free, the 4th starts the first delay (login_delay_s 5)
        sign_in(page, console, password="wrong")
        page.get_by_role("alert").filter(has_text="Wrong name or password.").wait_for()
    sign_in(page, console)  # the right password, but too soon
    page.get_by_role("alert").filter(has_text="Too many failed sign-ins: try again in 5 s.").wait_for()
    assert page.url.startswith(f"{console.url}/login")
    console.clock.now += 5.1
    sign_in(page, console)
    page.wait_for_url(f"{console.url}/tasks")


def test_a_scan_started_from_its_form_reaches_100_percent_without_a_reload(
    page: Any, console: Console, shots: Path
) -> None:
    signed_in(page, console)
    page.locator("summary", has_text="Start scan").click()
    page.get_by_label("Task Id").fill("42")
    page.get_by_label("Duration").fill("3")
    page.get_by_role("button", name="Start scan").click()
    page.wait_for_url(f"{console.url}/tasks/*")
    task_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.notReloaded = true")
    page.locator(f'[data-pct-of="{task_id}"]', has_text="100 %").wait_for(timeout=SHOWN_MS)
    page.locator(f'[data-state-of="{task_id}"]', has_text="succeeded").wait_for(timeout=SHOWN_MS)
    page.locator(f'[data-ending-of="{task_id}"]', has_text="exit code 0").wait_for(timeout=SHOWN_MS)
    assert page.evaluate("window.notReloaded") is True
    assert page.locator(f'[data-stop-of="{task_id}"]').is_hidden()
    # The log is its own stream: its last line may come after the state event that ends the run.
    page.locator("#log", has_text="scan 42: 100%").wait_for(timeout=SHOWN_MS)
    assert "PYMGR_PROGRESS" not in page.locator("#log").inner_text()
    shoot(page, shots, "task")
    page.goto(f"{console.url}/tasks")
    row = page.locator(f"#task-{task_id}")
    assert "succeeded" in row.inner_text() and "console:alice" in row.inner_text()
    shoot(page, shots, "tasks")
    page.set_viewport_size(VIEWPORTS["phone"])  # at 375 px the table fits whole, not only the page
    fits = page.evaluate("(w => [w.scrollWidth, w.clientWidth])(document.querySelector('.table-wrap'))")
    assert fits[0] <= fits[1], fits


def _stream_requests(page: Any) -> list[Any]:
    found: list[Any] = []
    page.on("request", lambda r: found.append(r) if "/log/stream" in r.url else None)
    return found


def test_the_log_follows_live_pauses_resumes_after_a_drop_and_downloads_whole(
    page: Any, console: Console
) -> None:
    signed_in(page, console)
    task_id = start_scan(console, duration=4)
    streams = _stream_requests(page)
    page.goto(f"{console.url}/tasks/{task_id}")
    log, pause = page.locator("#log"), page.locator("#log-pause")
    page.locator("#log", has_text="scan 5: 20%").wait_for(timeout=SHOWN_MS)  # lines appear, no reload
    pause.click()
    assert pause.inner_text() == "Resume"
    paused = log.inner_text()
    time.sleep(0.6)  # the scan prints a line every 0.1 s meanwhile
    assert log.inner_text() == paused
    pause.click()
    page.locator("#log", has_text=re.compile(r"scan 5: [4-9]\d%")).wait_for(timeout=SHOWN_MS)
    with Client(socket=console.daemon.socket) as daemon:
        assert daemon.task(task_id).state == "running"
        console.drop_connections()  # the browser reopens the stream with Last-Event-ID
        pause.wait_for(state="hidden", timeout=SHOWN_MS)  # the log's end came
        whole = daemon.logs(task_id, 0, progress=False).decode()
    assert log.inner_text().rstrip("\n") == whole.rstrip("\n")  # every line once: no gap, no repeat
    resumed = [r.all_headers().get("last-event-id") for r in streams[2:]]  # [0] opened it, [1] resumed it
    assert any(resumed), [(r.url, r.all_headers()) for r in streams]
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the log").click()
    assert Path(download.value.path()).read_text() == whole
    assert download.value.suggested_filename == f"task-{task_id}.log"


def test_a_long_scan_stopped_from_the_page_leaves_no_process_of_its_tree(page: Any, console: Console) -> None:
    signed_in(page, console)
    page.locator("summary", has_text="Start scan").click()
    page.get_by_label("Task Id").fill("7")
    page.get_by_label("Duration").fill("600")
    page.get_by_label("Fork Child").check()
    page.get_by_role("button", name="Start scan").click()
    page.wait_for_url(f"{console.url}/tasks/*")
    task_id = int(page.url.rsplit("/", 1)[1])
    page.locator("#log", has_text="grandchild pid").wait_for(timeout=SHOWN_MS)
    grandchild = int(re.search(r"grandchild pid (\d+)", page.locator("#log").inner_text()).group(1))  # type: ignore[union-attr]
    with Client(socket=console.daemon.socket) as daemon:
        leader = daemon.task(task_id).pid
    assert leader and not gone(leader) and not gone(grandchild)
    page.locator(f'[data-state-of="{task_id}"]', has_text="running").wait_for(timeout=SHOWN_MS)
    duration = page.locator(f'[data-duration-of="{task_id}"]')
    seen = duration.inner_text()
    wait_for(lambda: duration.inner_text() != seen, timeout_s=5)  # it counts on while the scan runs
    page.get_by_role("link", name="Stop…").click()
    page.get_by_role("heading", name=f"Stop task {task_id}?").wait_for()
    page.get_by_role("button", name=f"Stop task {task_id}").click()
    page.wait_for_url(f"{console.url}/tasks/{task_id}")
    page.locator(f'[data-state-of="{task_id}"]', has_text="stopped").wait_for(timeout=SHOWN_MS)
    page.locator(f'[data-ending-of="{task_id}"]', has_text="signal SIGTERM").wait_for(timeout=SHOWN_MS)
    assert gone(leader) and gone(grandchild)


def test_an_action_not_allowed_is_not_offered_and_forcing_it_shows_a_clear_403(
    page: Any, console: Console, shots: Path
) -> None:
    signed_in(page, console, "bob", "/actions")
    assert page.locator("#action-demo-whoami").is_visible()
    assert page.locator("#action-demo-echo").count() == 0
    assert page.get_by_role("navigation").get_by_role("link", name="Audit").count() == 0
    forced = page.goto(f"{console.url}/audit")
    assert forced is not None and forced.status == 403
    page.get_by_role("heading", name="Not done").wait_for()
    shoot(page, shots, "forbidden")
    page.goto(f"{console.url}/actions")
    with page.expect_response(lambda r: r.url.endswith("/actions/demo/echo")) as posted:
        page.evaluate(
            """() => {
            const form = document.querySelector("#action-demo-whoami form");
            form.removeAttribute("hx-post");
            form.action = "/actions/demo/echo";
            form.submit();
        }"""
        )
    assert posted.value.status == 403
    page.get_by_role("alert").filter(has_text="You may not call demo.echo").wait_for()


def test_a_post_without_the_csrf_token_is_refused(page: Any, console: Console) -> None:
    signed_in(page, console)
    page.locator("summary", has_text="Start scan").click()
    page.get_by_label("Task Id").fill("3")
    page.evaluate("document.querySelector('#start-scan input[name=csrf]').remove()")
    with page.expect_response(
        lambda r: r.url == f"{console.url}/tasks" and r.request.method == "POST"
    ) as posted:
        page.get_by_role("button", name="Start scan").click()
    assert posted.value.status == 403
    page.get_by_role("alert").filter(has_text="This form is stale or not from this site").wait_for()
    direct = page.request.post(f"{console.url}/tasks", form={"type": "scan", "task_id": "3"})
    assert direct.status == 403
    with Client(socket=console.daemon.socket) as daemon:
        assert daemon.tasks() == []  # neither started anything


def test_a_session_past_its_idle_timeout_is_sent_to_login(
    page: Any, start_console: Callable[..., Console]
) -> None:
    console = start_console(session_idle_s=60)
    signed_in(page, console)
    console.clock.now += 59
    page.get_by_role("navigation").get_by_role("link", name="Actions").click()
    page.wait_for_url(f"{console.url}/actions")
    console.clock.now += 61
    page.get_by_role("navigation").get_by_role("link", name="Status").click()
    page.wait_for_url(f"{console.url}/login?next=/status")
    sign_in(page, console)
    page.wait_for_url(f"{console.url}/status")


def test_the_audit_page_shows_the_person_next_to_each_call(page: Any, console: Console, shots: Path) -> None:
    signed_in(page, console, path="/actions")
    page.locator("#action-demo-whoami").get_by_role("button", name="Call whoami").click()
    page.locator("#action-demo-whoami pre.result", has_text="console:alice").wait_for(timeout=SHOWN_MS)
    assert page.url == f"{console.url}/actions"  # htmx replaced the card; the page stayed
    shoot(page, shots, "actions")
    page.goto(f"{console.url}/audit")
    rows = page.locator("tbody tr", has_text="demo.whoami")
    rows.first.wait_for()
    for n in range(rows.count()):
        cells = rows.nth(n).locator("td")
        assert cells.nth(1).inner_text() == "console:alice" and cells.nth(3).inner_text() == "demo.whoami"
    shoot(page, shots, "audit")
    page.goto(f"{console.url}/status")
    shoot(page, shots, "status")


def test_a_form_with_bad_fields_shows_each_error_beside_its_field(
    page: Any, console: Console, shots: Path
) -> None:
    signed_in(page, console)
    page.locator("summary", has_text="Start scan").click()
    page.evaluate("document.querySelector('#start-scan').noValidate = true")  # past the browser's checks
    page.get_by_label("Task Id").fill("1")
    page.get_by_label("Exit Code").fill("300")
    page.get_by_label("Duration").fill("-1")
    page.get_by_role("button", name="Start scan").click()
    page.locator("#start-scan-exit_code-error", has_text="Exit Code must be at most 255").wait_for()
    page.locator("#start-scan-duration-error").wait_for()
    page.locator("#start-scan").scroll_into_view_if_needed()
    shoot(page, shots, "form-errors")


def test_a_run_that_ended_before_the_page_listened_is_shown_ended(page: Any, console: Console) -> None:
    signed_in(page, console)
    held: list[Any] = []
    page.route("**/events", lambda route: held.append(route))  # the page's event stream waits here
    task_id = start_scan(console, duration=30)
    with Client(socket=console.daemon.socket) as daemon:
        wait_for(lambda: daemon.task(task_id).state == "running")
        page.goto(f"{console.url}/tasks/{task_id}")
        assert page.locator(f'[data-state-of="{task_id}"]').inner_text() == "running"
        wait_for(lambda: held)
        daemon.stop_task(task_id)
        daemon.wait(task_id, timeout_s=20)  # its events are sent while the page cannot hear them
    held[0].continue_()
    page.locator(f'[data-state-of="{task_id}"]', has_text="stopped").wait_for(timeout=SHOWN_MS)
    page.locator(f'[data-ending-of="{task_id}"]', has_text="signal SIGTERM").wait_for(timeout=SHOWN_MS)
    assert page.locator(f'[data-stop-of="{task_id}"]').is_hidden()


def test_a_gap_brings_the_pages_live_parts_up_to_date_without_a_reload(page: Any, console: Console) -> None:
    signed_in(page, console)
    hub = console.app.state.console.hub
    publish = hub.publish
    gap = Event(id=None, kind="gap", time=None, data={"dropped": 1})
    task_id = start_scan(console, duration=30)
    url = f"{console.url}/tasks/{task_id}"
    with Client(socket=console.daemon.socket) as daemon:
        wait_for(lambda: daemon.task(task_id).state == "running")
        with page.expect_response(lambda r: r.url == url and r.request.resource_type == "fetch"):
            page.goto(url)  # the page copies itself once its event stream is open: then it listens
        page.locator("#log", has_text="scan 5: ").wait_for(timeout=SHOWN_MS)
        page.evaluate("window.notReloaded = true")
        log = page.locator("#log").inner_text()
        console.in_loop(lambda: setattr(hub, "publish", lambda event: None))  # the events are lost
        daemon.stop_task(task_id)
        daemon.wait(task_id, timeout_s=20)
        time.sleep(0.5)
        assert page.locator(f'[data-state-of="{task_id}"]').inner_text() == "running"
        console.in_loop(lambda: (delattr(hub, "publish"), publish(gap)))
        page.locator(f'[data-state-of="{task_id}"]', has_text="stopped").wait_for(timeout=SHOWN_MS)
        page.locator(f'[data-ending-of="{task_id}"]', has_text="signal SIGTERM").wait_for(timeout=SHOWN_MS)
        assert page.locator(f'[data-stop-of="{task_id}"]').is_hidden()
        assert page.evaluate("window.notReloaded") is True
        assert page.locator("#log").inner_text().startswith(log)  # the log view is the one it was
        with page.expect_response(
            lambda r: r.url == f"{console.url}/tasks" and r.request.resource_type == "fetch"
        ):
            page.goto(f"{console.url}/tasks")
        console.in_loop(lambda: setattr(hub, "publish", lambda event: None))
        newer = start_scan(console, duration=0)
        daemon.wait(newer, timeout_s=20)
        time.sleep(0.5)
        assert page.locator(f"#task-{newer}").count() == 0
        console.in_loop(lambda: (delattr(hub, "publish"), publish(gap)))
        page.locator(f"#task-{newer}", has_text="succeeded").wait_for(timeout=SHOWN_MS)
