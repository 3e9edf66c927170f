"""The presentation view in real Chromium: the captions alone, the same text as the main view,
bound to the tab's token (a wrong one is 404)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from components.evaluation import Clip
from tests.browser.conftest import padded_wav
from tests.browser.test_page import CaptionPage, _speech_seconds

pytestmark = pytest.mark.browser

CLIP = "librispeech-1272-128104-0000"


def test_the_presentation_view_follows_the_tab_and_needs_its_token(
    app_url: str, open_browser: Any, clips: dict[str, Clip], wav_dir: Path
) -> None:
    clip = clips[CLIP]
    browser = open_browser(padded_wav(clip, wav_dir))
    page = CaptionPage(browser, app_url)
    link = page.page.locator("#presentation-link")
    link.wait_for(timeout=15_000)
    href = link.get_attribute("href") or ""
    assert href.startswith("live/")  # relative: it stays under a path prefix
    token = href.removeprefix("live/")
    assert len(token) >= 24

    screen = browser.new_context(viewport={"width": 1920, "height": 1080}).new_page()
    screen.goto(f"{app_url.rstrip('/')}/{href}", wait_until="load")
    box = screen.locator("#captions")
    assert box.get_attribute("aria-live") == "polite"
    size = screen.evaluate(
        "() => parseFloat(getComputedStyle(document.querySelector('#captions')).fontSize)"
    )
    assert size >= 48, size

    page.record()
    page.wait_audio(_speech_seconds(clip))
    page.stop()
    assert page.wait_state("done") == "done"
    text = page.final_text()
    assert text
    screen.wait_for_function(
        "(t) => document.querySelector('#captions .final').textContent.trim() === t",
        arg=text,
        timeout=15_000,
    )
    assert screen.locator("#captions .partial").inner_text().strip() == ""
    # Nothing but the captions (and a key hint) on the presentation screen.
    assert screen.locator("button, input, textarea, select").count() == 0

    base = app_url.rstrip("/")
    assert httpx.get(f"{base}/live/{token}").status_code == 200
    wrong = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert httpx.get(f"{base}/live/{wrong}").status_code == 404
    assert httpx.get(f"{base}/live/{wrong}/captions").status_code == 404
    state = httpx.get(f"{base}/live/{token}/captions", timeout=30).json()
    assert state["text"].strip() == text and state["state"] == "done"


def test_keys_record_stop_and_clear(
    app_url: str, open_browser: Any, clips: dict[str, Clip], wav_dir: Path
) -> None:
    clip = clips[CLIP]
    page = CaptionPage(open_browser(padded_wav(clip, wav_dir)), app_url)
    assert "R record / stop" in page.page.locator("#intro").inner_text()
    page.page.locator("body").click(position={"x": 5, "y": 5})
    page.page.keyboard.press("r")
    page.mic.get_by_role("button", name="Stop").wait_for(timeout=10_000)
    page.wait_state("live", timeout=20)
    page.wait_audio(_speech_seconds(clip))
    page.page.keyboard.press("r")
    assert page.wait_state("done") == "done"
    assert page.final_text()
    page.assert_nothing_lost()
    # A key typed into a field is text, not a command.
    terms = page.page.get_by_label("Names and terms")
    terms.fill("")
    terms.press("c")
    assert terms.input_value() == "c" and page.final_text()
    terms.blur()
    page.page.locator("body").click(position={"x": 5, "y": 5})
    page.page.keyboard.press("c")
    page.wait_state("idle", timeout=10)
    assert "Press Record" in page.captions()
