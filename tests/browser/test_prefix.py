"""The page behind a path prefix, as a hosting front end serves it: through a real reverse
proxy on loopback (``tests/support_prefix_proxy.py``) that maps ``/lc/...`` to the app's
``/...``. The microphone's connection and the follower link are relative URLs; here they
must stay under the prefix, or nothing would reach the app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from components.core.evaluation import Clip, wer
from tests.browser.conftest import padded_wav, running_app
from tests.browser.test_page import MAX_WER, CaptionPage, _speech_seconds
from tests.support_prefix_proxy import prefix_proxy
from tests.support_server import BackgroundLoop, serve_app

pytestmark = pytest.mark.browser

PREFIX = "/lc"
CLIP = "librispeech-1272-128104-0000"


@pytest.fixture(scope="module")
def prefixed_url(playwright: Any) -> Iterator[str]:
    with (
        running_app({"GRADIO_ROOT_PATH": PREFIX}) as app,
        BackgroundLoop() as bg,
        serve_app(bg, prefix_proxy(app.url, PREFIX)) as base,
    ):
        yield f"{base}{PREFIX}/"


def test_the_page_works_under_a_path_prefix(
    prefixed_url: str, open_browser: Any, clips: dict[str, Clip], wav_dir: Path
) -> None:
    clip = clips[CLIP]
    page = CaptionPage(open_browser(padded_wav(clip, wav_dir)), prefixed_url)
    sockets: list[str] = []
    page.page.on("websocket", lambda ws: sockets.append(ws.url))
    page.record()
    page.wait_audio(_speech_seconds(clip))
    page.stop()
    assert page.wait_state("done") == "done"
    assert wer(clip.text, page.final_text()) <= MAX_WER, page.final_text()
    page.assert_nothing_lost()
    assert sockets and all(f"{PREFIX}/mic" in url for url in sockets), sockets

    link = page.page.locator("#presentation-link")
    follower = page.page.evaluate("(a) => a.href", link.element_handle())
    assert f"{PREFIX}/live/" in follower
    state = httpx.get(f"{follower}/captions", timeout=30).json()
    assert state["text"].strip() == page.final_text()

    # The push stream passes the proxy too: its first event is the whole state, and the
    # follower page in Chromium takes it (not the long poll) and shows the final text.
    with httpx.stream("GET", f"{follower}/events", timeout=30) as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        first = next(line for line in events.iter_lines() if line.startswith("data: "))
    snapshot = json.loads(first.removeprefix("data: "))
    assert snapshot["text"].strip() == page.final_text() and snapshot["state"] == "done"
    screen = page.context.new_page()
    screen.goto(follower, wait_until="load")
    screen.wait_for_function(
        "(t) => document.querySelector('#captions .final').textContent.trim() === t",
        arg=page.final_text(),
        timeout=15_000,
    )
    assert screen.evaluate("() => document.documentElement.dataset.transport") == "events"
