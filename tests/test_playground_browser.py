"""The /playground page in a real browser (Debian's Chromium, driven by Playwright) against
`aimarket serve` in embedded mode: a task submitted from the page plays in the page.

Playwright's own browser download is never used (it needs the internet): the tests launch
/usr/bin/chromium. Without it they skip, except under CI=true, where they fail.
A screenshot of the finished page is written to test-artifacts/playground.png.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import IN_CI, ROOT, TOKEN, Api

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
#: No sandbox (containers lack the namespaces), no GPU, and nothing that calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
MISSING = f"{CHROMIUM} is missing: install Debian's chromium to run the playground browser tests"

# Decided before any fixture starts a server: a skipped module costs nothing.
pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not IN_CI, reason=MISSING)

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: First generation imports torch and audiocraft in the server: allow for it.
GENERATION_MS = 120_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(MISSING + " (CI must provide it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh context per test: its own (empty) localStorage, at a desktop size."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def connect(page: Page, api: Api, token: str) -> None:
    page.goto(f"{api.url}/playground")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Connect").click()


#: The audio element once it can play: its source, duration, error and readyState.
PLAYABLE_JS = """async (audio) => {
  // Waits for one of the element's events, or fails after 30 s or on a media error.
  const waitFor = (name) => new Promise((resolve, reject) => {
    audio.addEventListener(name, resolve, { once: true });
    audio.addEventListener('error', () => reject(new Error(`media error ${audio.error?.code}`)),
      { once: true });
    setTimeout(() => reject(new Error(`no '${name}' within 30 s`)), 30000);
  });
  if (audio.readyState < 1) await waitFor('loadedmetadata');
  // 'canplay' means the browser has decoded the start of the file, not just read its header.
  if (audio.readyState < 3) {
    const canplay = waitFor('canplay');
    audio.preload = 'auto';
    if (audio.readyState < 3) await canplay;
  }
  return {
    src: audio.currentSrc,
    duration: audio.duration,
    error: audio.error ? audio.error.code : null,
    readyState: audio.readyState,
  };
}"""


def test_a_task_submitted_from_the_page_plays_there(page: Page, embedded_api: Api) -> None:
    user = f"pg-{uuid.uuid4().hex[:6]}"
    try:
        connect(page, embedded_api, TOKEN)
        expect(page.locator("#token-state")).to_contain_text("Connected")
        user_field = page.get_by_label("User id")
        user_field.fill(user)
        user_field.press("Tab")  # the page saves the user id on 'change'
        page.get_by_label("Workflow", exact=True).select_option("text2music")
        expect(page.locator("#workflow-description")).to_have_text("Text to music with MusicGen.")
        page.get_by_label("Prompt").fill("warm piano")
        page.get_by_label("Duration").fill("1")
        page.get_by_role("button", name="Generate").click()

        # The task id comes back at once (202); the player appears when the stream says done.
        task_id = page.get_by_test_id("task-id")
        expect(task_id).to_have_text(_UUID, timeout=10_000)
        player = page.get_by_test_id("player")
        player.wait_for(timeout=GENERATION_MS)

        expect(page.get_by_test_id("status")).to_have_text("succeeded")
        expect(page.locator("#progress-text")).to_have_text("100%")
        assert page.locator("#progress").evaluate("bar => bar.value") == 1
        # Every stage the workflow lists is shown, and every one of them is done.
        expect(page.locator("#stages .stage").first).to_be_visible()
        expect(page.locator("#stages .stage:not(.stage-done)")).to_have_count(0)

        audio: dict[str, Any] = player.evaluate(PLAYABLE_JS)
        assert audio["src"].startswith(embedded_api.url + "/media/"), audio
        assert audio["error"] is None, audio
        assert audio["duration"] > 0.9, audio
        assert audio["readyState"] >= 3, audio  # HAVE_FUTURE_DATA: it can play
        expect(page.get_by_test_id("audio-meta")).to_contain_text("1.0 s · 32 kHz")

        for name in ("waveform", "spectrogram"):
            picture = page.get_by_test_id(name)
            picture.wait_for()
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=picture.element_handle()
            )

        # The finished task is listed under this user, with its own (small) player.
        past = page.get_by_test_id("past-tasks")
        listed = past.locator(f'li[data-task-id="{task_id.inner_text()}"]')
        expect(listed).to_be_visible()
        expect(listed.locator(".badge")).to_have_text("succeeded")
        expect(listed.locator("audio")).to_have_count(1)
        expect(listed).to_contain_text("warm piano")
        expect(past.locator("li")).to_have_count(1)
    finally:
        # Also on failure: the picture shows what the page said.
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)


def test_a_wrong_token_is_refused_in_the_page(page: Page, embedded_api: Api) -> None:
    connect(page, embedded_api, "not-the-token")
    error = page.get_by_test_id("token-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("The API refused this token (401 unauthorized)")
    expect(page.get_by_role("button", name="Generate")).to_be_disabled()
    assert page.evaluate("localStorage.getItem('aimarket.playground.token')") is None


def test_token_is_remembered_and_input_errors_show_at_their_field(
    page: Page, embedded_api: Api
) -> None:
    connect(page, embedded_api, TOKEN)
    expect(page.locator("#token-state")).to_contain_text("Connected")
    page.reload()  # no typing this time: the token was kept
    expect(page.locator("#token-state")).to_contain_text("Connected")
    page.get_by_label("Workflow", exact=True).select_option("text2music")
    page.get_by_label("Prompt").fill("warm piano")
    page.get_by_label("Duration").fill("1000")
    page.get_by_role("button", name="Generate").click()
    duration_error = page.locator("#input-duration-error")
    expect(duration_error).to_have_text("must be at most 30")
    expect(page.get_by_label("Duration")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("task-id")).to_be_hidden()  # nothing was submitted

    page.get_by_role("button", name="Forget token").click()
    assert page.evaluate("localStorage.getItem('aimarket.playground.token')") is None
    expect(page.get_by_role("button", name="Generate")).to_be_disabled()


def test_the_page_holds_no_token_and_forbids_inline_script(embedded_api: Api) -> None:
    page = httpx.get(f"{embedded_api.url}/playground")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert TOKEN not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{embedded_api.url}/playground/playground.js").status_code == 200
    assert httpx.get(f"{embedded_api.url}/playground/secret.txt").status_code == 404
