"""Every word, every time: people repeat themselves, and captions keep every repeat.

The conversation set (``tests/data/conversation.jsonl``) splices the evaluation recordings the
way people talk: a clip said twice, a sentence whose last words are said again, one speaker's
short answer repeated between another's lines, a clip three times. Each clear case says one
phrase a known number of times. Whatever the pace (a backlog sent at once, or real time) and
whatever happens to the stream (a planned handover, a lost connection replayed), the
transcript must say that phrase as many times, and lose no more words than the same model
transcribing the whole recording offline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from components.backends.local import LocalBackend
from components.backends.websocket import RealtimeWSBackend
from components.continuity.policy import ContinuityPolicy
from components.core.audio import float_to_pcm16
from components.core.evaluation import Conversation, errors, load_conversations, normalize
from components.core.protocol import SAMPLE_RATE, TranscriptionDone
from components.engines.whisper.engine import WhisperEngine, bundled_model_path
from components.engines.whisper.fixed_steps import run_fixed_steps
from tests.support_relay import TcpRelay
from tests.support_server import ServerURL, running_server
from tests.test_continuity import Recording, caption, cut_at, relay_url


@pytest.fixture(scope="module")
def cases() -> dict[str, Conversation]:
    found = {c.id: c for c in load_conversations() if c.clear}
    if not found:
        pytest.skip("speech evaluation set not found (set EVAL_DIR)")
    return found


@pytest.fixture(scope="module")
def offline(cases: dict[str, Conversation]) -> dict[str, str]:
    """The same model over each whole recording, greedy: the bar for words kept."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(bundled_model_path()), device="cpu", compute_type="int8")
    out = {}
    for case in cases.values():
        segments, _ = model.transcribe(
            case.audio, beam_size=1, temperature=0.0, condition_on_previous_text=False
        )
        out[case.id] = " ".join(s.text.strip() for s in segments)
    return out


@pytest.fixture(scope="module")
def engine() -> Iterator[WhisperEngine]:
    built = WhisperEngine(cpu_threads=2)
    yield built
    asyncio.run(built.aclose())


async def transcribe(engine: WhisperEngine, audio: np.ndarray, *, pace: float) -> str:
    """The audio through one stream of the engine, in 100 ms appends at ``pace`` x real time
    (0: as fast as the engine takes them)."""
    stream = await LocalBackend(engine).open()
    step = SAMPLE_RATE // 10

    async def send() -> None:
        for i in range(0, len(audio), step):
            await stream.send_audio(float_to_pcm16(audio[i : i + step]))
            if pace:
                await asyncio.sleep(0.1 / pace)
        await stream.finish()

    sender = asyncio.create_task(send())
    text = None
    async for event in stream:
        if isinstance(event, TranscriptionDone):
            text = event.text
    await sender
    assert text is not None
    return text


def assert_every_word(case: Conversation, text: str, offline: str) -> None:
    said = case.repeats_in(text)
    assert said == case.times, f"{case.phrase!r} {said} times, not {case.times}: {text}"
    lost = errors(case.text, text).deletions
    assert lost <= errors(case.text, offline).deletions, f"{lost} words lost: {text}"


CLEAR = [
    "jfk-twice",
    "jfk-last-words-twice",
    "belly-last-words-twice",
    "go-forward-twice",
    "answers-between-speakers",
    "belly-three-times",
]


@pytest.mark.parametrize("case_id", CLEAR)
async def test_a_backlog_keeps_every_repeat(
    engine: WhisperEngine, cases: dict[str, Conversation], offline: dict[str, str], case_id: str
) -> None:
    """All the audio arrives before the first decode (a file, a replay, a machine behind)."""
    case = cases[case_id]
    assert_every_word(case, await transcribe(engine, case.audio, pace=0), offline[case_id])


@pytest.mark.parametrize("case_id", ["jfk-twice", "answers-between-speakers"])
async def test_live_audio_keeps_every_repeat(
    engine: WhisperEngine, cases: dict[str, Conversation], offline: dict[str, str], case_id: str
) -> None:
    case = cases[case_id]
    assert_every_word(case, await transcribe(engine, case.audio, pace=1.0), offline[case_id])


def test_the_set_says_each_phrase_as_often_as_its_reference() -> None:
    """The manifest and the splices agree (a recipe that cut a phrase would test nothing)."""
    for case in load_conversations():
        if case.clear:
            assert case.repeats_in(case.text) == case.times >= 2, case.id
            assert case.seconds > 5.0


# --------------------------------------------------------------------------- seams


@pytest.fixture(scope="module")
def server() -> Iterator[ServerURL]:
    with running_server("--engine", "whisper") as url:
        yield url


@pytest.fixture(scope="module")
def answers(cases: dict[str, Conversation]) -> Recording:
    """Two speakers, one answering "go forward ten meters" three times (20 s)."""
    case = cases["answers-between-speakers"]
    return Recording(float_to_pcm16(case.audio), case.text)


async def test_a_handover_between_repeats_keeps_them(
    server: ServerURL, answers: Recording, cases: dict[str, Conversation], offline: dict[str, str]
) -> None:
    """Legs of at most 7 s: every answer is near a seam, none is taken for a repeat."""
    result = await caption(
        RealtimeWSBackend(server.ws), answers, policy=ContinuityPolicy(max_stream_seconds=7)
    )
    assert result.stats.handovers >= 2, result.stats
    case = cases["answers-between-speakers"]
    assert_every_word(case, result.text, offline[case.id])


@pytest.mark.parametrize("cut_second", [11.0, 17.5])
async def test_a_lost_connection_replayed_over_a_repeat_keeps_it(
    server: ServerURL,
    answers: Recording,
    cases: dict[str, Conversation],
    offline: dict[str, str],
    cut_second: float,
) -> None:
    """The connection drops while the answer is said again (at 11 s the second time, at
    17.5 s the third): the replayed audio holds the earlier answer too, and the seam keeps
    both."""
    async with TcpRelay("127.0.0.1", server.port) as relay:
        backend = RealtimeWSBackend(relay_url(relay, server))
        result = await caption(backend, answers, at_second=cut_at(relay, cut_second))
    assert relay.cuts == 1 and result.stats.reconnects == 1, result.stats
    case = cases["answers-between-speakers"]
    assert_every_word(case, result.text, offline[case.id])


def test_a_sentence_said_again_a_second_later_keeps_its_end(
    engine: WhisperEngine, cases: dict[str, Conversation]
) -> None:
    """ "Stuff it into you, his belly counselled him", then the same a second later: decoded
    on half-second steps, the decoder closed the first one's text after "his belly" while
    its speech went on, and the pause used to settle "counselled him" unheard."""
    assert cases  # the speech evaluation set is there (the fixture skips without it)
    whole = {c.id: c for c in load_conversations()}["eval-with-repeats"]
    ((stream,), _) = run_fixed_steps(engine, [whole.audio[: 30 * SAMPLE_RATE]], 0.5)
    text = stream.text
    # "counselled" is read several ways; "him" ends each sentence.
    assert normalize(text).count("him") == 2, text
