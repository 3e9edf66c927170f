"""The presentation views in real Chromium: the captions alone, large, the same text as the main
view; on the page itself (``?view=captions``) and on a follower link bound to the tab's token
(a wrong one is 404). And the keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from components.core.evaluation import Clip
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
    page.unfold("settings")
    terms = page.page.get_by_label("Names and terms")
    terms.fill("")
    terms.press("c")
    assert terms.input_value() == "c" and page.final_text()
    terms.blur()
    page.page.locator("body").click(position={"x": 5, "y": 5})
    page.page.keyboard.press("c")
    page.wait_state("idle", timeout=10)
    assert "Press Record" in page.captions()


FULL_HD = {"width": 1920, "height": 1080}


def test_the_page_turns_into_a_presentation_view_and_back(
    app_url: str, open_browser: Any, clips: dict[str, Clip], wav_dir: Path
) -> None:
    clip = clips[CLIP]
    browser = open_browser(padded_wav(clip, wav_dir))
    page = CaptionPage(browser, app_url, viewport=FULL_HD)
    page.page.get_by_role("button", name="Presentation view").click()
    assert "view=captions" in page.page.url
    captions = page.page.locator("#captions .captions-box")
    assert captions.is_visible()
    # Hidden, not covered (buttons fade out with their transition).
    expect(page.mic.get_by_role("button", name="Record")).to_be_hidden()
    expect(page.page.locator("#clear")).to_be_hidden()
    size = captions.evaluate("(e) => parseFloat(getComputedStyle(e).fontSize)")
    assert size >= 48, size
    assert captions.get_attribute("aria-live") == "polite"

    page.page.keyboard.press("r")  # the recording is driven from the keyboard while presenting
    page.page.locator("#mic .mic[data-state=recording]").wait_for(state="attached")
    page.wait_audio(_speech_seconds(clip))
    page.page.keyboard.press("r")
    assert page.wait_state("done") == "done"
    text = page.final_text()
    assert text and captions.locator(".final").is_visible()
    page.assert_nothing_lost()

    # Light and dark: both high-contrast, text and background opposite.
    colours = []
    for _ in range(2):
        page.page.keyboard.press("t")
        colours.append(
            captions.evaluate(
                "(e) => [getComputedStyle(e.querySelector('.final')).color,"
                " getComputedStyle(document.querySelector('#captions')).backgroundColor,"
                " ...[...document.querySelectorAll('#captions *')].map((x) =>"
                " getComputedStyle(x).backgroundColor).filter((c) => c !== 'rgba(0, 0, 0, 0)')]"
            )
        )
    assert {tuple(c) for c in colours} == {
        ("rgb(255, 255, 255)", "rgb(0, 0, 0)"),
        ("rgb(0, 0, 0)", "rgb(255, 255, 255)"),
    }, colours

    page.page.get_by_role("button", name="Exit presentation (P)").click()
    assert "view=captions" not in page.page.url
    expect(page.mic.get_by_role("button", name="Record")).to_be_visible()

    # The same view straight from the URL, e.g. a bookmark on the projector's machine, in the
    # system's colour scheme.
    for scheme, background in (("dark", "rgb(0, 0, 0)"), ("light", "rgb(255, 255, 255)")):
        shown = browser.new_context(viewport=FULL_HD, color_scheme=scheme).new_page()
        shown.goto(f"{app_url.rstrip('/')}/?view=captions", wait_until="load")
        shown.locator("#captions .captions-box").wait_for(timeout=30_000)
        assert shown.evaluate("() => document.documentElement.classList.contains('lc-present')")
        expect(shown.locator("#clear")).to_be_hidden()
        painted = shown.evaluate(
            "() => getComputedStyle(document.querySelector('#captions')).backgroundColor"
        )
        assert painted == background, (scheme, painted)
        shown.context.close()
