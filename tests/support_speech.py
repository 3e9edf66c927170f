"""Real speech as the engine tests feed it: a clip's samples, cut in chunks, framed for Voxtral.

    from tests.support_speech import chunks_of, speech, uneven_chunks

    samples = speech(clips["jfk"])                  # float32, mono, 16 kHz
    engine.transcribe(chunks_of(samples))           # 100 ms chunks, as fast as taken
    uneven_chunks(samples, (1, 7, 333))             # sizes in turn: a client's odd chunking

The Voxtral helpers compare the project's framing with vLLM's own (``vllms_frames`` imports
vLLM, so only the tests that run under it call that one).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import soundfile as sf

from components.core.evaluation import Clip


def speech(clip: Clip) -> np.ndarray:
    """The clip's samples, float32 at 16 kHz (the rate every engine here takes, checked)."""
    samples, rate = sf.read(clip.path, dtype="float32")
    assert rate == 16_000
    return samples


async def chunks_of(samples: np.ndarray, size: int = 1600) -> AsyncIterator[np.ndarray]:
    """``size``-sample chunks (100 ms by default) as fast as the engine takes them (it pushes
    back when behind)."""
    for at in range(0, len(samples), size):
        yield samples[at : at + size]


def uneven_chunks(samples: np.ndarray, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """``samples`` cut into chunks of ``sizes``, taken in turn until the end."""
    chunks, at, turn = [], 0, 0
    while at < len(samples):
        size = sizes[turn % len(sizes)]
        chunks.append(samples[at : at + size])
        at += size
        turn += 1
    return chunks


def frame_count(spec: Any, samples: np.ndarray, **framer_options: Any) -> int:
    """How many frames (model steps) ``VoxtralFramer`` makes of ``samples``."""
    from components.engines.vllm.voxtral import VoxtralFramer

    framer = VoxtralFramer(spec, **framer_options)
    framer.push_audio(samples)
    framer.end_audio()
    count = 0
    while framer.next_frame() is not None:
        count += 1
        framer.feed_output([0])
    return count


async def vllms_frames(
    engine: Any, chunks: list[np.ndarray], fed_back: Callable[[int], list[int]]
) -> list[tuple[list[int], np.ndarray]]:
    """The frames of the model class's own ``buffer_realtime_audio`` (as ``vllm serve`` frames
    a realtime stream): each frame's prompt token ids and audio. After the n-th frame (from 1)
    the tokens ``fed_back(n)`` go back, as the model's output would."""
    from vllm.model_executor.model_loader import get_model_cls

    model_config = engine.llm.model_config
    model_cls = get_model_cls(model_config)
    tokens: asyncio.Queue[list[int]] = asyncio.Queue()

    async def audio() -> AsyncIterator[np.ndarray]:
        for chunk in chunks:
            yield chunk

    frames: list[tuple[list[int], np.ndarray]] = []
    async with asyncio.timeout(60):
        async for prompt in model_cls.buffer_realtime_audio(audio(), tokens, model_config):
            samples, _rate = prompt["multi_modal_data"]["audio"]
            frames.append((list(prompt["prompt_token_ids"]), np.asarray(samples)))
            tokens.put_nowait(fed_back(len(frames)))
    return frames
