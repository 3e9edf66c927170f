"""The page's caption outputs in real Chromium: "Send captions to" in the settings, a recording
sent to the Zoom and YouTube stand-ins (``tests/support_platforms.py``), their state shown with
the address masked, and the OBS overlay's transparent background."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from components.core.evaluation import Clip
from tests.browser.conftest import padded_wav
from tests.browser.test_page import SPEECH, CaptionPage, _speech_seconds
from tests.support_platforms import YOUTUBE_KEY, ZOOM_TOKEN, PlatformStandIn, urls
from tests.support_server import BackgroundLoop, serve_app

pytestmark = pytest.mark.browser


@pytest.fixture
def platforms() -> Iterator[tuple[PlatformStandIn, dict[str, str]]]:
    stand_in = PlatformStandIn()
    with BackgroundLoop() as bg, serve_app(bg, stand_in.app()) as base:
        yield stand_in, urls(base)


def test_captions_go_to_the_outputs_and_their_addresses_stay_masked(
    app_url: str,
    open_browser: Any,
    clips: dict[str, Clip],
    wav_dir: Path,
    platforms: tuple[PlatformStandIn, dict[str, str]],
) -> None:
    stand_in, url = platforms
    clip = clips[SPEECH]
    page = CaptionPage(open_browser(padded_wav(clip, wav_dir)), app_url)
    page.unfold("settings")
    zoom = page.page.get_by_label("Zoom: API token URL")
    assert zoom.get_attribute("type") == "password"
    zoom.fill(url["zoom"])
    page.page.get_by_label("YouTube Live: caption ingestion URL").fill(url["youtube"])
    page.record()
    page.wait_audio(_speech_seconds(clip))
    page.stop()
    assert page.wait_state("done") == "done"
    text = page.final_text()
    rows = page.page.locator("#outputs tr")
    expect(rows).to_have_count(2)
    for kind in ("zoom", "youtube"):
        row = page.page.locator(f'#outputs tr[data-kind="{kind}"]')
        expect(row).to_have_attribute("data-state", "done", timeout=15_000)
        assert int(row.get_attribute("data-words") or 0) == len(text.split())
    assert stand_in.words("zoom") == text.split()
    assert stand_in.words("youtube") == text.split()
    shown = page.page.locator("#outputs").inner_text()
    assert "closedcaption?…" in shown
    assert ZOOM_TOKEN not in shown and YOUTUBE_KEY not in shown


def test_a_refused_output_address_is_a_sentence_in_the_page(
    app_url: str, open_browser: Any
) -> None:
    page = CaptionPage(open_browser(None), app_url)
    page.unfold("settings")
    page.page.get_by_label("Teams: CART caption link").fill("https://example.com/cartcaption")
    page.record()
    error = page.page.locator("#status .error")
    error.wait_for(timeout=20_000)
    assert "CART caption link" in error.inner_text()


def test_the_overlay_draws_captions_on_a_transparent_background(
    app_url: str, open_browser: Any, tmp_path: Path
) -> None:
    browser = open_browser(None)
    page = CaptionPage(browser, app_url)
    page.unfold("settings")
    href = page.page.locator("#overlay-link").get_attribute("href") or ""
    assert "overlay=1" in href
    overlay = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
    custom = href.replace("size=42", "size=64") + "&color=%23ffd400"
    overlay.goto(f"{app_url.rstrip('/')}/{custom}", wait_until="load")
    style = overlay.evaluate(
        "() => { const s = getComputedStyle(document.body);"
        " return [s.backgroundColor, getComputedStyle(document.documentElement).backgroundColor,"
        " s.fontSize, s.color]; }"
    )
    assert style[0] == "rgba(0, 0, 0, 0)" and style[1] == "rgba(0, 0, 0, 0)", style
    assert style[2] == "64px" and style[3] == "rgb(255, 212, 0)", style
    shot = tmp_path / "overlay.png"
    overlay.screenshot(path=str(shot), omit_background=True)
    from PIL import Image

    with Image.open(shot) as image:
        assert image.mode == "RGBA" and image.getpixel((5, 5))[3] == 0  # see-through
