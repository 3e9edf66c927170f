"""The page's "Realtime server URL" backend in real Chromium, against real vLLM (CPU build).

The page is served by ``python app.py`` without its local engine; the person picks "Realtime
server URL", enters the address of vLLM's own server (tiny Voxtral Realtime model, random
weights: the text is letters, not words) and records through the fake microphone. The caption
stream must reach ``transcription.done`` with nothing lost; a model vLLM does not serve must
come back as a sentence in the page.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.core.evaluation import Clip
from tests.browser.conftest import padded_wav, running_app
from tests.browser.test_page import OTHER, CaptionPage, _speech_seconds
from tests.support_vllm import VllmServer

pytestmark = [pytest.mark.browser, pytest.mark.vllm, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def page_url(playwright: Any) -> Iterator[str]:
    with running_app({"LOCAL_BACKEND": "0"}) as app:
        yield app.url


def use_server(page: CaptionPage, url: str) -> None:
    page.unfold("settings")
    page.page.get_by_role("radio", name="Realtime server URL").check()
    page.page.locator("#rt-url").get_by_role("textbox").fill(url)


def test_captions_from_vllms_own_server(
    vllm_server: VllmServer,
    page_url: str,
    open_browser: Any,
    clips: dict[str, Clip],
    wav_dir: Path,
) -> None:
    clip = clips[OTHER]
    page = CaptionPage(open_browser(padded_wav(clip, wav_dir)), page_url)
    use_server(page, vllm_server.ws)
    page.record()
    page.watch(_speech_seconds(clip))
    page.stop()
    assert page.wait_state("done", "failed", timeout=120) == "done", page.page.locator(
        "#status"
    ).inner_text()
    assert page.final_text(), "the tiny model's letters reached the page"
    assert vllm_server.ws in (page.page.locator("#figures").text_content() or "")
    page.assert_nothing_lost()


def test_a_model_vllm_does_not_serve_is_a_sentence(
    vllm_server: VllmServer,
    playwright: Any,
    open_browser: Any,
    clips: dict[str, Clip],
    wav_dir: Path,
) -> None:
    with running_app({"LOCAL_BACKEND": "0", "REALTIME_MODEL": "no-such-model"}) as app:
        page = CaptionPage(open_browser(padded_wav(clips[OTHER], wav_dir)), app.url)
        use_server(page, vllm_server.ws)
        page.record()
        error = page.page.locator("#status .error")
        error.wait_for(timeout=60_000)
        message = error.inner_text()
        assert "no-such-model" in message and "Traceback" not in message, message
        page.mic.get_by_role("button", name="Record").wait_for(timeout=20_000)
