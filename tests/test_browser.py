"""The chat page in headless Debian Chromium (Playwright): type a need, get bundle cards with reasons."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_serve_fixtures import running_server

from rag_rec.serve.app import create_app

pytest_plugins = ("test_serve_fixtures",)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "eval" / "results" / "screenshots"


def _ensure_chromium() -> None:
    """Install Debian's chromium when it is missing and we may (root with apt-get); skip if still missing."""
    if not CHROMIUM.exists() and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600, check=False)
        subprocess.run(["apt-get", "install", "-y", "chromium"], env=env, capture_output=True, timeout=900,
                       check=False)
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium (/usr/bin/chromium) is not installed and could not be installed with apt-get")


@pytest.fixture(scope="module")
def browser():
    _ensure_chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (extra dev)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_chat_page_shows_bundle_cards_with_reasons(browser, recording_service, serve_settings):
    with running_server(create_app(recording_service, serve_settings), serve_settings) as base:
        page = browser.new_page(viewport={"width": 1200, "height": 1100})
        console_errors: list[str] = []
        page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: console_errors.append(str(exc)))
        page.goto(base + "/")
        assert page.title().startswith("Bundle assistant")

        page.get_by_label("Your message").fill("something nice")
        page.get_by_role("button", name="Send").click()
        clarify = page.locator(".msg.assistant.clarify .bubble")
        clarify.wait_for(timeout=15_000)
        assert "What is it for" in clarify.inner_text()

        page.get_by_label("Your message").fill("for my new camcorder, under $80")
        page.keyboard.press("Enter")
        page.locator(".bundle .card").first.wait_for(timeout=20_000)
        page.wait_for_function("!document.getElementById('send').disabled", timeout=20_000)

        bundles = page.locator(".bundle")
        assert bundles.count() >= 1
        first = bundles.first
        title = first.locator(".bundle-title").inner_text()
        reason = first.locator(".bundle-reason").inner_text()
        assert title and len(reason) > 20
        cards = first.locator(".card")
        assert cards.count() >= 2
        served = [cards.nth(i).get_attribute("data-id") for i in range(cards.count())]
        for i, item_id in enumerate(served):
            product = recording_service.product(item_id)
            assert product is not None
            assert cards.nth(i).locator(".card-title").get_attribute("title") == product.title
            category = product.category[-1] if product.category else "Uncategorised"
            assert cards.nth(i).locator(".card-category").inner_text().lower() == category.lower()
            price = "Price not listed" if product.price is None else f"${product.price:,.2f}"
            assert cards.nth(i).locator(".card-price").inner_text() == price
        answer = page.locator(".msg.assistant .bubble").last.inner_text()
        assert title in answer and "under $80" in answer
        assert page.locator(".path").first.get_attribute("data-produced-by") in {
            "llm", "llm_repaired", "fallback", "heuristic"}
        sent = recording_service.requests[-1]
        assert "camcorder" in sent.need and sent.budget == 80.0
        assert page.locator("#status").inner_text().startswith("Answered in")
        assert console_errors == []

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = page.screenshot(path=str(SCREENSHOTS / "chat.png"), full_page=True)
        (Path(tempfile.gettempdir()) / "rag_rec_chat.png").write_bytes(shot)
        assert len(shot) > 10_000
        page.close()


def test_a_long_conversation_keeps_working_and_a_cut_off_answer_says_so(browser, recording_service, serve_settings):
    with running_server(create_app(recording_service, serve_settings), serve_settings) as base:
        page = browser.new_page()
        page.goto(base + "/")
        for turn in range(17):  # the API takes 30 turns; the page sends the latest ones
            page.get_by_label("Your message").fill(f"camcorder accessories, option {turn}")
            page.keyboard.press("Enter")
            page.locator(".msg.assistant:not(.pending)").nth(turn + 1).wait_for(timeout=20_000)
        assert page.locator(".msg.assistant.error").count() == 0
        assert page.locator("#status").inner_text().startswith("Answered in")

        cut = 'event: message\ndata: {"text": "Here are "}\n\n'  # the stream ends before its done event
        page.route("**/v1/chat", lambda route: route.fulfill(status=200, content_type="text/event-stream", body=cut))
        page.get_by_label("Your message").fill("a tripod")
        page.keyboard.press("Enter")
        page.locator(".msg.assistant.error").wait_for(timeout=10_000)
        assert "cut off" in page.locator(".msg.assistant.error .bubble").inner_text()
        assert page.locator(".msg.user.unsent").count() == 1
        page.close()
