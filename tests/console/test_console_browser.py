"""The console in a real headless browser: Debian's chromium driven by Playwright (never a downloaded
browser). Sign in, start a scan from its form, and watch its progress reach 100 % without a reload;
screenshots of the pages at desktop and phone width are saved into the test's directory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.console.conftest import PASSWORDS, Console

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() or shutil.which("chromium") is None,
    reason="Debian's chromium is missing: make test installs it (SYSTEM_TOOLS)",
)

#: Desktop and phone (375 px: the narrowest common phone) viewports.
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 375, "height": 740}}


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    # As root, chromium refuses to start without --no-sandbox (its sandbox needs an unprivileged user).
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        yield browser
        browser.close()


def _sign_in(page, console: Console) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{console.url}/tasks")
    assert page.url.startswith(f"{console.url}/login")
    page.get_by_label("Name").fill("alice")
    page.get_by_label("Password").fill(PASSWORDS["alice"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{console.url}/tasks")


def test_a_scan_started_from_its_form_reaches_100_percent_without_a_reload(
    browser, console: Console, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport=VIEWPORTS["desktop"])
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    _sign_in(page, console)
    page.screenshot(path=tmp_path / "tasks-desktop.png", full_page=True)
    page.locator("summary", has_text="Start scan").click()
    page.get_by_label("Task Id").fill("42")
    page.get_by_label("Duration").fill("2")
    page.get_by_role("button", name="Start scan").click()
    page.wait_for_url(f"{console.url}/tasks/*")
    task_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.notReloaded = true")
    percent = page.locator(f'[data-pct-of="{task_id}"]')
    percent.filter(has_text="100 %").wait_for(timeout=30_000)
    page.locator(f'[data-state-of="{task_id}"]', has_text="succeeded").wait_for(timeout=30_000)
    assert page.evaluate("window.notReloaded") is True
    assert page.locator(f'[data-stop-of="{task_id}"]').is_hidden()
    log = page.locator("#log").inner_text()
    assert "scan 42: 100%" in log and "PYMGR_PROGRESS" not in log
    page.screenshot(path=tmp_path / "task-desktop.png", full_page=True)
    assert not [e for e in errors if "Content Security Policy" in e], errors
    page.goto(f"{console.url}/actions")
    card = page.locator("#action-demo-whoami")
    card.get_by_role("button", name="Call whoami").click()
    page.locator("#action-demo-whoami pre.result", has_text="console:alice").wait_for(timeout=10_000)
    assert page.url == f"{console.url}/actions"  # htmx replaced the card; the page stayed
    for name in ("actions", "audit", "status"):
        page.goto(f"{console.url}/{name}")
        page.screenshot(path=tmp_path / f"{name}-desktop.png", full_page=True)
    phone = browser.new_page(viewport=VIEWPORTS["phone"])
    _sign_in(phone, console)
    for name in ("tasks", f"tasks/{task_id}", "actions", "audit", "status"):
        phone.goto(f"{console.url}/{name}")
        phone.screenshot(path=tmp_path / f"{name.replace('/', '-')}-phone.png", full_page=True)
        assert phone.evaluate("document.documentElement.scrollWidth") <= 375 + 1, name
    shots = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(shots) == 10, shots
