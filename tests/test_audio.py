"""Stateful resampling: chunked output equals whole-signal output, and no sample is lost."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from components.core import audio
from tests.support_speech import uneven_chunks


def _signal(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(7)
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))
    x = np.repeat(mono[:, None], channels, axis=1) if channels > 1 else mono
    return x.astype(np.float32)


def _odd_chunks(x: np.ndarray) -> list[np.ndarray]:
    return uneven_chunks(x, (1, 7, 333, 4801, 997, 24000, 13, 12345))


@pytest.mark.parametrize("rate", [48_000, 44_100])
def test_chunked_equals_whole(rate: int) -> None:
    x = _signal(rate, 3.3)
    whole = soxr.ResampleStream(rate, 16_000, 1, dtype="float32", quality="HQ").resample_chunk(
        x, last=True
    )
    r = audio.StreamResampler()
    parts = [r.process(c, rate) for c in _odd_chunks(x)] + [r.flush()]
    chunked = np.concatenate(parts)
    assert len(chunked) == len(whole) == round(len(x) * 16_000 / rate)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    assert r.samples_in == len(x)
    assert r.samples_out == len(chunked)


def test_stereo_int16_is_downmixed() -> None:
    x = _signal(48_000, 1.0, channels=2)
    pcm = (x * 32767).astype(np.int16)
    r = audio.StreamResampler()
    out = np.concatenate([r.process(c, 48_000) for c in _odd_chunks(pcm)] + [r.flush()])
    assert len(out) == 16_000
    ref = soxr.resample(pcm[:, 0].astype(np.float32) / 32768, 48_000, 16_000, quality="HQ")
    # Same signal on both channels: the downmix equals either channel.
    assert np.corrcoef(out, ref)[0, 1] > 0.999


def test_16k_passes_through_untouched() -> None:
    x = _signal(16_000, 0.5)
    r = audio.StreamResampler()
    np.testing.assert_array_equal(r.process(x, 16_000), x)
    assert len(r.flush()) == 0


def test_rate_change_flushes_the_old_segment() -> None:
    r = audio.StreamResampler()
    a = np.concatenate([r.process(_signal(48_000, 1.0), 48_000)])
    b = r.process(_signal(44_100, 1.0), 44_100)
    tail = r.flush()
    assert len(a) + len(b) + len(tail) == 32_000


@pytest.mark.parametrize("rate", [4_000, 200_000])
def test_rates_out_of_range_are_refused(rate: int) -> None:
    with pytest.raises(audio.AudioFormatError, match="outside"):
        audio.StreamResampler().process(np.zeros(10, np.int16), rate)


def test_bad_shapes_and_types_are_refused() -> None:
    with pytest.raises(audio.AudioFormatError):
        audio.to_mono_float32(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(audio.AudioFormatError):
        audio.to_mono_float32(np.zeros(4, np.uint8))


def test_pcm16_framing_clips_and_round_trips() -> None:
    x = np.array([0.0, 0.5, -0.5, 1.5, -2.0], np.float32)
    data = audio.float_to_pcm16(x)
    assert len(data) == 10
    back = audio.pcm16_to_float(data)
    np.testing.assert_allclose(back, np.clip(x, -1, 1), atol=1e-4)
    assert audio.pcm16_seconds(data) == 5 / 16_000
