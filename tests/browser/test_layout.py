"""The speaker's page laid out for people who are not us, in real Chromium at 1280 and 390 px.

One prominent Record; Clear and the presentation view beside it; the captions right below; the
settings, a recording to stream and the figures folded; "Stop streaming" only while a recording
streams; on a phone, Record and the captions on the first screen without sideways scrolling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from components.core.evaluation import Clip
from tests.browser.conftest import padded_wav
from tests.browser.test_page import SPEECH, CaptionPage, _speech_seconds

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _box(page: CaptionPage, selector: str) -> dict[str, float]:
    box = page.page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not laid out"
    return box


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280px", "390px"])
def test_record_and_the_captions_fill_the_first_screen(
    viewport: dict[str, int], app_url: str, open_browser: Any
) -> None:
    page = CaptionPage(open_browser(None), app_url, viewport=viewport)
    record = _box(page, "#mic .record-button")
    captions = _box(page, "#captions .captions-box")
    height = viewport["height"]
    assert record["y"] + record["height"] <= height, record
    assert record["y"] < captions["y"], "Record comes before the captions"
    assert captions["y"] + 0.5 * captions["height"] <= height, captions
    # Record is the largest control in its row.
    for other in ("#clear", "#present"):
        assert (
            record["width"] * record["height"]
            >= 0.9 * _box(page, other)["width"] * _box(page, other)["height"]
        ), other
    # Nothing to stop yet, everything set once is folded, no sideways scrolling on a phone.
    expect(page.page.locator("#stop")).to_be_hidden()
    expect(page.page.get_by_label("Names and terms")).to_be_hidden()
    expect(page.page.locator("#upload")).to_be_hidden()
    expect(page.page.locator("#figures table")).to_be_hidden()
    expect(page.page.locator("#figures summary")).to_be_visible()
    overflow = page.page.evaluate(
        "() => document.scrollingElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 1, overflow
    page.unfold("settings")
    expect(page.page.get_by_label("Names and terms")).to_be_visible()
    expect(page.page.get_by_role("radio", name="Local")).to_be_visible()


def test_the_figures_stay_open_while_they_update_and_show_the_followers(
    app_url: str, open_browser: Any, clips: dict[str, Clip], wav_dir: Path
) -> None:
    clip = clips[SPEECH]
    browser = open_browser(padded_wav(clip, wav_dir))
    page = CaptionPage(browser, app_url, viewport=DESKTOP)
    followers = page.page.locator("#followers")
    expect(followers).to_have_attribute("data-followers", "0")
    page.page.locator("#figures summary").click()
    expect(page.page.locator("#figures table")).to_be_visible()
    href = page.page.locator("#presentation-link").get_attribute("href")
    screen = browser.new_context().new_page()
    screen.goto(f"{app_url.rstrip('/')}/{href}", wait_until="load")
    page.record()
    page.wait_audio(_speech_seconds(clip))
    # The follower page is on the push stream, and the speaker's page counts it.
    assert screen.evaluate("() => document.documentElement.dataset.transport") == "events"
    expect(followers).to_have_attribute("data-followers", "1", timeout=10_000)
    assert "1 following" in followers.inner_text()
    page.stop()
    assert page.wait_state("done") == "done"
    # Dozens of re-renders later, the panel someone opened is still open.
    expect(page.page.locator("#figures table")).to_be_visible()
    assert page.figure("followers") == "1"
