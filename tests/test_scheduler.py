"""The round scheduler alone: when a stream's audio goes into a round, with a recording round.

The round function here records what it was handed and answers with plain outcomes; the
scheduler under test is the real one, on a real event loop and worker thread.
"""

from __future__ import annotations

import asyncio

import numpy as np

from components.core.protocol import SAMPLE_RATE
from components.engines.scheduler import Outcome, Scheduler, Work


class Recorder:
    """A round function that remembers the audio each slot was handed."""

    def __init__(self, *, eager: bool) -> None:
        self.eager = eager
        self.handed: list[tuple[str, float]] = []

    def __call__(self, work: list[Work]) -> list[Outcome]:
        self.handed += [(w.slot.id, len(w.audio) / SAMPLE_RATE) for w in work]
        return [Outcome(eager=self.eager) for _ in work]


def chunk(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE), np.float32)


async def feed(scheduler: Scheduler, slot_id: str, seconds: float, *, eager: bool) -> list[float]:
    recorder = scheduler._run_round  # type: ignore[attr-defined]
    slot = scheduler.open(slot_id, state=None, partials=False)
    slot.eager = eager
    for _ in range(round(seconds / 0.125)):
        await scheduler.add_audio(slot, chunk(0.125))
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    scheduler.close(slot)
    return [s for i, s in recorder.handed if i == slot_id]  # type: ignore[attr-defined]


async def alone(*, eager: bool, seconds: float = 1.5) -> list[float]:
    """Audio (s) handed to each round of a stream fed alone to a fresh scheduler."""
    scheduler = Scheduler(Recorder(eager=eager), min_step=0.5)
    try:
        return await feed(scheduler, "stream", seconds, eager=eager)
    finally:
        await scheduler.aclose()


async def test_a_listening_stream_is_looked_at_every_half_step() -> None:
    handed = await alone(eager=True)
    assert len(handed) >= 5
    assert max(handed) <= 0.25 + 1e-9


async def test_a_speaking_stream_waits_for_a_whole_step() -> None:
    handed = await alone(eager=False)
    assert handed and min(handed) >= 0.5 - 1e-9
    assert sum(handed) <= 1.5 + 1e-9


async def test_listening_rounds_do_not_pull_speaking_streams_in_early() -> None:
    recorder = Recorder(eager=False)
    scheduler = Scheduler(recorder, min_step=0.5)
    try:
        listening = scheduler.open("listening", state=None, partials=False)
        speaking = scheduler.open("speaking", state=None, partials=False)
        listening.eager = True
        await scheduler.add_audio(speaking, chunk(0.3))
        await scheduler.add_audio(listening, chunk(0.3))
        await asyncio.sleep(0.2)
        # Only the listening stream was due (a round of the voice detector alone): the
        # speaking one keeps its 0.3 s for a round of its own at a whole step.
        assert ("listening", 0.3) in [(i, round(s, 3)) for i, s in recorder.handed]
        assert all(i != "speaking" for i, _ in recorder.handed)
    finally:
        await scheduler.aclose()
