"""Real vLLM's CPU build on the tiny Voxtral Realtime model: what the real-vLLM tests cost.

    make bench-vllm                      # = .venv-vllm/bin/python bench/vllm_cpu.py
    .venv-vllm/bin/python bench/vllm_cpu.py --clips 5

Runs the project's ``VllmEngine`` in this process (vLLM's engine core in a child process) on
the model ``make vllm-cpu`` generated, and prints JSON: engine start time; model steps per
second (one step = one 80 ms frame) and real-time factor with one session, then with two at
once; resident memory of this process and its children. The clips come from the evaluation
set, sent as fast as the engine takes them. These are figures for the test machinery only:
the tiny model's speed says nothing about the 4B model's on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import soundfile as sf

from components.core.evaluation import load_clips
from tests.support_vllm import ENGINE_ENV, missing


def rss_mib() -> float:
    """Resident memory of this process and all its children (vLLM's engine core)."""
    import psutil

    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total / 2**20


async def chunks(samples: np.ndarray, size: int = 1600) -> AsyncIterator[np.ndarray]:
    for at in range(0, len(samples), size):
        yield samples[at : at + size]


async def one(engine: Any, samples: np.ndarray) -> tuple[int, float]:
    """(model steps, seconds) for one stream."""
    started = time.perf_counter()
    steps = 0
    async with contextlib.aclosing(engine.transcribe(chunks(samples))) as events:
        async for event in events:
            usage = getattr(event, "usage", None)
            if usage is not None:
                steps = usage.completion_tokens
    return steps, time.perf_counter() - started


async def measure(engine: Any, audio: list[np.ndarray], sessions: int) -> dict[str, float]:
    steps = 0
    busy = 0.0
    audio_seconds = 0.0
    started = time.perf_counter()
    for at in range(0, len(audio), sessions):
        batch = audio[at : at + sessions]
        if len(batch) < sessions:
            break
        results = await asyncio.gather(*(one(engine, samples) for samples in batch))
        steps += sum(s for s, _ in results)
        busy += max(t for _, t in results)
        audio_seconds += sum(len(samples) / 16_000 for samples in batch)
    wall = time.perf_counter() - started
    return {
        "sessions": sessions,
        "audio_seconds": round(audio_seconds, 1),
        "steps": steps,
        "steps_per_second": round(steps / busy, 1),
        "real_time_factor": round(busy / (audio_seconds / sessions), 3),
        "wall_seconds": round(wall, 2),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.update(ENGINE_ENV)
    from components.engines.vllm.engine import VllmEngine
    from components.engines.vllm.settings import vllm_version

    clips = load_clips()[: args.clips]
    audio = [sf.read(c.path, dtype="float32")[0] for c in clips]
    before = time.perf_counter()
    engine = VllmEngine.from_env()
    start_seconds = time.perf_counter() - before
    try:
        await one(engine, audio[0][:16_000])  # warm-up
        single = await measure(engine, audio, 1)
        double = await measure(engine, audio, 2)
        memory = rss_mib()
    finally:
        await engine.aclose()
    return {
        "vllm": vllm_version(),
        "model": "tiny-voxtral-realtime (make vllm-cpu)",
        "cpus": os.cpu_count(),
        "engine_start_seconds": round(start_seconds, 1),
        "one_session": single,
        "two_sessions": double,
        "two_vs_one_steps_per_second": round(
            double["steps_per_second"] / single["steps_per_second"], 2
        ),
        "rss_mib": round(memory),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=10, help="evaluation clips to stream")
    args = parser.parse_args()
    if (reason := missing()) is not None:
        print(reason, file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(main_async(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
