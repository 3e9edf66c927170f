"""A session longer than its backend streams, in real Chromium: captions continue across
handovers, and no sample is lost.

The page runs with ``MAX_STREAM_SECONDS=12`` (the local engine, each stream handed over after
8-10 s, in a pause), and Chromium's fake microphone plays 35 s of speech: five clips with
short pauses between them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from components.core.evaluation import Clip, wer
from tests.browser.conftest import SILENCE_AFTER, SILENCE_BEFORE, running_app
from tests.browser.test_page import MAX_WER, CaptionPage

pytestmark = pytest.mark.browser

CLIPS = (
    "librispeech-1089-134686-0000",
    "librispeech-1089-134686-0001",
    "librispeech-1089-134691-0001",
    "librispeech-1272-128104-0000",
    "librispeech-1089-134686-0002",
)
GAP = 0.7


@pytest.fixture(scope="module")
def short_stream_app(playwright: Any) -> Iterator[str]:
    with running_app({"MAX_STREAM_SECONDS": "12"}) as app:
        yield app.url


def long_wav(clips: dict[str, Clip], directory: Path) -> tuple[Path, str, float]:
    pieces = [np.zeros(int(SILENCE_BEFORE * 16_000), np.int16)]
    for cid in CLIPS:
        samples, rate = soundfile.read(clips[cid].path, dtype="int16")
        assert rate == 16_000
        pieces += [samples, np.zeros(int(GAP * 16_000), np.int16)]
    speech = sum(len(p) for p in pieces) / 16_000
    pieces.append(np.zeros(int(SILENCE_AFTER * 16_000), np.int16))
    path = directory / "long-session.wav"
    soundfile.write(path, np.concatenate(pieces), 16_000, subtype="PCM_16")
    return path, " ".join(clips[cid].text for cid in CLIPS), speech


def test_captions_continue_across_stream_handovers(
    short_stream_app: str, open_browser: Any, clips: dict[str, Clip], wav_dir: Path
) -> None:
    wav, reference, seconds = long_wav(clips, wav_dir)
    page = CaptionPage(open_browser(wav), short_stream_app)
    page.record()
    timeline = page.watch(seconds + 1.0)
    page.stop()
    assert page.wait_state("done") == "done"
    text = page.final_text()
    assert int(page.figure("streams")) >= 3, page.page.locator("#figures").inner_text()
    assert page.figure("reconnects") == "0"
    assert wer(reference, text) <= MAX_WER, text
    # The captions grew while the streams changed underneath: never emptied, never rewound.
    shown = [len(t) for _, t, _ in timeline if "Listening" not in t and "Press Record" not in t]
    assert shown and all(b >= a - 40 for a, b in itertools.pairwise(shown)), shown
    page.assert_nothing_lost()
    assert "could not be recovered" not in page.page.locator("#status").inner_text()
