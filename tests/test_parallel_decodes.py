"""Decodes split across model replicas: the same text as each group decoded on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from components.core.audio import load_file
from components.core.evaluation import Clip
from components.core.protocol import SAMPLE_RATE
from components.engines.whisper.decoder import (
    DecodeItem,
    WhisperDecoder,
    decode_cost,
    split_work,
)
from components.engines.whisper.engine import WhisperEngine, default_workers
from components.engines.whisper.policy import Hypothesis


@pytest.fixture(scope="module")
def engine() -> Iterator[WhisperEngine]:
    built = WhisperEngine(cpu_threads=2, workers=2)
    yield built
    asyncio.run(built.aclose())


def test_work_splits_into_groups_of_about_equal_cost() -> None:
    groups = split_work([3.0, 1.0, 1.0, 1.0, 2.0, 2.0], 2)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(g == sorted(g) for g in groups)
    assert sorted(sum([3.0, 1.0, 1.0, 1.0, 2.0, 2.0][i] for i in g) for g in groups) == [5, 5]
    # The same costs always split the same way (a fixed schedule replays word for word).
    assert split_work([3.0, 1.0, 1.0, 1.0, 2.0, 2.0], 2) == groups
    assert split_work([1.0, 1.0], 4) == [[0], [1]]
    assert split_work([1.0, 1.0, 1.0], 1) == [[0, 1, 2]]
    assert split_work([], 2) == []


def test_two_threads_make_two_parallel_decodes_by_default() -> None:
    assert default_workers(1) == 1
    assert default_workers(2) == default_workers(4) == 2


def _items(clips: dict[str, Clip]) -> list[DecodeItem]:
    ids = [
        "jfk",
        "librispeech-1089-134686-0000",
        "librispeech-1221-135766-0002",
        "vbdemand-noisy-p257-001",
        "mfa-cold-corpus",
    ]
    items = []
    for n, clip_id in enumerate(ids):
        audio = load_file(str(clips[clip_id].path))[: SAMPLE_RATE * (3 + 2 * n)]
        items.append(DecodeItem(audio, "", "", whole=n % 2 == 1, locate_end=n == 1))
    text = "And so, my fellow Americans, ask not"
    items.append(DecodeItem(items[0].audio, "", text, align=True))
    return items


def _words(h: Hypothesis) -> list[str]:
    return " ".join(p.text for p in h.pieces).split()


def test_parallel_decodes_read_as_their_groups_read_alone(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    items = _items(clips)
    together = engine.decoder.decode(items)
    assert len(together) == len(items)
    # The same model, one group at a time on this thread.
    alone = WhisperDecoder(engine.decoder.model)
    groups = split_work([decode_cost(item) for item in items], 2)
    assert len(groups) == 2
    for group in groups:
        for i, h in zip(group, alone.decode([items[i] for i in group]), strict=True):
            assert _words(together[i]) == _words(h), items[i]
            assert together[i].text_end == h.text_end
            assert together[i].spans == h.spans
    # Each hypothesis is its own item's: Kennedy's words first, the alignment last.
    assert _words(together[0])[:2] == ["And", "so"]
    assert together[-1].spans is not None and len(together[-1].spans) == 7
    # What each thread counted is added up: five decodes (an alignment generates nothing).
    assert engine.decoder.items == alone.items == 5
    assert engine.decoder.calls == alone.calls
    assert engine.decoder.completion_tokens == alone.completion_tokens > 0


def test_a_closed_decoder_decodes_the_same_groups_on_one_thread(
    engine: WhisperEngine, clips: dict[str, Clip]
) -> None:
    items = _items(clips)[:4]
    decoder = WhisperDecoder(engine.decoder.model, workers=2)
    before = [_words(h) for h in decoder.decode(items)]
    decoder.close()
    after = [_words(h) for h in decoder.decode(items)]
    assert after == before and all(before)
    assert decoder.items == 8
