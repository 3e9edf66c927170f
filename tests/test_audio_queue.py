"""The one bounded audio queue between a producer (a socket, a local stream) and an engine."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from components.engines.audio_queue import AudioQueue


def samples(n: int, value: float = 0.0) -> np.ndarray:
    return np.full(n, value, np.float32)


async def test_the_queue_is_bounded_and_wakes_its_waiters() -> None:
    queue = AudioQueue(8)
    assert queue.put_nowait(samples(6))
    assert not queue.put_nowait(samples(4))  # would pass 8 samples: refused, nothing queued
    assert queue.queued == 6
    waiter = asyncio.create_task(queue.wait_for_space(4))
    await asyncio.sleep(0)
    assert not waiter.done()
    first = await queue.get()
    assert first is not None and len(first) == 6
    await asyncio.wait_for(waiter, 1)  # taking a chunk made room
    assert queue.put_nowait(samples(1, 0.5))
    queue.end()
    chunks = [chunk async for chunk in queue.chunks()]
    assert [c.tolist() for c in chunks] == [[0.5]]
    assert queue.total == 7


async def test_put_waits_for_room_and_keeps_the_order() -> None:
    queue = AudioQueue(4)
    producer = asyncio.gather(*(queue.put(samples(3, float(i))) for i in range(3)))
    taken = []
    for _ in range(3):
        chunk = await asyncio.wait_for(queue.get(), 1)
        assert chunk is not None
        taken.append(float(chunk[0]))
    assert await producer == [True, True, True]
    assert taken == [0.0, 1.0, 2.0]


async def test_a_chunk_larger_than_the_bound_goes_into_an_empty_queue() -> None:
    queue = AudioQueue(4)
    assert queue.put_nowait(samples(10))
    assert not queue.fits(1)


async def test_a_closed_queue_releases_everyone_and_drops_its_audio() -> None:
    queue = AudioQueue(2)
    queue.put_nowait(samples(2))
    blocked = asyncio.create_task(queue.put(samples(2)))
    await asyncio.sleep(0)
    queue.close()
    assert await asyncio.wait_for(blocked, 1) is False
    assert await queue.get() is None
    assert queue.queued == 0
    with pytest.raises(RuntimeError):
        queue.put_nowait(samples(1))
