"""The project's Voxtral framing equals vLLM's own ``buffer_realtime_audio``, frame for frame.

``VoxtralFramer`` re-implements what the model class's ``buffer_realtime_audio`` does inside
``vllm serve`` (so the in-process engine can push back and guard the length). Both are fed the
same speech in the same chunks and the same fed-back tokens; every frame's token ids and audio
samples must be identical. vLLM's side runs on the real model config and tokenizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from components.core.evaluation import Clip
from components.engines.vllm.voxtral import VoxtralFramer
from tests.support_speech import speech, uneven_chunks, vllms_frames

CLIP = "librispeech-1089-134686-0001"  # 3.3 s
UNEVEN = (1, 7, 160, 333, 1601, 4000, 15_999, 97)


def fed_back(index: int) -> list[int]:
    """A distinct token per frame (any id of the vocabulary), as the model's output would be."""
    return [40 + index % 26]


def our_frames(engine: Any, chunks: list[np.ndarray]) -> list[tuple[list[int], Any]]:
    framer = VoxtralFramer(engine.spec, max_model_len=engine.llm.model_config.max_model_len)
    frames: list[tuple[list[int], Any]] = []
    for chunk in chunks:
        framer.push_audio(chunk)
        while (frame := framer.next_frame()) is not None:  # as soon as each is complete
            frames.append((list(frame.token_ids), frame.audio))
            framer.feed_output(fed_back(len(frames)))
    framer.end_audio()
    while (frame := framer.next_frame()) is not None:
        frames.append((list(frame.token_ids), frame.audio))
        framer.feed_output(fed_back(len(frames)))
    return frames


@pytest.mark.parametrize(
    "sizes", [(160,), (1600,), (16_000,), UNEVEN], ids=["10ms", "100ms", "1s", "uneven"]
)
def test_frames_equal_vllms_buffer(
    bg: Any, engine: Any, clips: dict[str, Clip], sizes: tuple[int, ...]
) -> None:
    chunks = uneven_chunks(speech(clips[CLIP]), sizes)
    theirs = bg.run(vllms_frames(engine, chunks, fed_back))
    ours = our_frames(engine, chunks)
    assert len(ours) == len(theirs) > 40
    for index, ((our_ids, our_audio), (their_ids, their_audio)) in enumerate(
        zip(ours, theirs, strict=True)
    ):
        assert our_ids == their_ids, f"frame {index}: token ids differ"
        assert our_audio.dtype == their_audio.dtype, f"frame {index}"
        np.testing.assert_array_equal(our_audio, their_audio, err_msg=f"frame {index}")


def test_the_first_frame_is_the_streaming_prompt(bg: Any, engine: Any) -> None:
    silence = [np.zeros(16_000, dtype=np.float32)]
    (first_ids, _), *_ = bg.run(vllms_frames(engine, silence, fed_back))
    assert tuple(first_ids) == tuple(engine.spec.prompt_tokens)
