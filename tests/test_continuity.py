"""Sessions that outlive their streams (components/continuity/chain.py), over real parts.

A recording of about 49 s (six LibriSpeech clips with short pauses between them) goes through
real servers (``python -m components serve`` with the bundled Whisper model), through a TCP
relay that the tests cut, and through the real AWS SDK, the local SageMaker front (a stand-in
for AWS's router) and the container. Audio is sent at twice real time, so that each run
takes about 25 s; the servers' limits are wall-clock limits, the chain's are reached by audio.
At three times real time the engine on a two-core machine fell behind the audio (after a
reconnection its text was up to 17 s behind what was sent, at a front's limit 33 s: more than
the 15 s a new stream hears or is sent again), and the runs measured that backlog rather
than the chain.

What "no word lost or doubled" means here: the chained transcript is compared with the
transcript of the same audio over one uninterrupted stream. The engine's own small variations
(a word heard differently) are allowed; a run of missing words, or a phrase said twice where
the uninterrupted stream said it once, is not.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from components.backends.base import Backend
from components.backends.play import play
from components.backends.websocket import RealtimeWSBackend
from components.continuity.chain import ContinuousStream
from components.continuity.policy import ContinuityPolicy, ContinuityStats, StreamNotice
from components.continuity.replay import ReplayBuffer
from components.continuity.seams import Seam, overlap_words
from components.core.audio import float_to_pcm16, load_file
from components.core.errors import BackendError
from components.core.evaluation import Clip, load_clips, normalize, wer
from components.core.protocol import SessionOptions
from tests.support_relay import TcpRelay
from tests.support_sagemaker import SageMakerSetup, sagemaker_fixture
from tests.support_server import ServerURL, running_server

SPEED = 2.0
"""Audio goes out at this multiple of real time (see the module's docstring)."""
CHUNK = 3_200
"""Samples per append (200 ms)."""
MAX_MISSING_RUN = 3
"""Longest run of the uninterrupted transcript's words the chained one may lack."""
WER_SLACK = 0.05
"""The chained transcript's WER may exceed the uninterrupted one's by this much."""


# --------------------------------------------------------------------------- the recording


@dataclass(frozen=True)
class Recording:
    pcm: bytes
    reference: str

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / 16_000


@pytest.fixture(scope="module")
def recording() -> Recording:
    clips: list[Clip] = [c for c in load_clips() if c.condition.startswith("clean-read")][:6]
    gap = np.zeros(int(0.7 * 16_000), np.float32)
    audio = np.concatenate([part for c in clips for part in (load_file(str(c.path)), gap)])
    rec = Recording(float_to_pcm16(audio), " ".join(c.text for c in clips))
    assert rec.seconds >= 40
    return rec


@dataclass
class Run:
    text: str
    stats: ContinuityStats
    notices: list[StreamNotice]


async def caption(
    backend: Backend,
    rec: Recording,
    *,
    policy: ContinuityPolicy | None = None,
    at_second: Callable[[float], None] | None = None,
    speed: float = SPEED,
) -> Run:
    """Send the recording through a continuous stream at ``speed``; ``at_second(t)`` is
    called after each append, with the audio time sent so far."""
    notices: list[StreamNotice] = []
    stream = await ContinuousStream.open(
        backend, policy=policy, on_notice=notices.append, label="test"
    )

    played = await play(
        stream, rec.pcm, pace=speed, chunk_seconds=CHUNK / 16_000, on_sent=at_second
    )
    text = played.done.text if played.done is not None else None
    assert text is not None
    return Run(text, stream.stats, notices)


def cut_at(relay: TcpRelay, *seconds: float) -> Callable[[float], None]:
    """An ``at_second`` hook that cuts the relay's connections at each of ``seconds``."""
    pending = sorted(seconds)

    def hook(t: float) -> None:
        if pending and t >= pending[0]:
            pending.pop(0)
            relay.cut()

    return hook


def assert_continuous(chained: str, uninterrupted: str, reference: str) -> None:
    """No run of words missing, no phrase doubled, WER within the single stream's bound."""
    a, b = normalize(uninterrupted), normalize(chained)
    for op, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        missing = (i2 - i1) - (j2 - j1)
        assert op == "equal" or missing <= MAX_MISSING_RUN, (
            f"missing {a[i1:i2]} (got {b[j1:j2]}) in:\n{chained}"
        )
    assert not _doubled(b) - _doubled(a), f"a phrase is doubled in:\n{chained}"
    assert wer(reference, chained) <= wer(reference, uninterrupted) + WER_SLACK, (
        f"{wer(reference, chained):.3f} vs {wer(reference, uninterrupted):.3f}:\n{chained}"
    )


def _doubled(words: list[str], n: int = 3) -> set[tuple[str, ...]]:
    """Phrases of ``n`` or more words said twice in a row."""
    found = set()
    for k in range(n, 9):
        for i in range(len(words) - 2 * k + 1):
            if words[i : i + k] == words[i + k : i + 2 * k]:
                found.add(tuple(words[i : i + k]))
    return found


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def server() -> Iterator[ServerURL]:
    with running_server("--engine", "whisper") as url:
        yield url


@pytest.fixture(scope="module")
def short_server() -> Iterator[ServerURL]:
    """Sessions end after 15 s (wall clock), announced in ``session.created``."""
    with running_server("--engine", "whisper", "--max-session-seconds", "15") as url:
        yield url


@pytest.fixture(scope="module")
def uninterrupted(server: ServerURL, recording: Recording) -> str:
    async def run() -> str:
        result = await caption(RealtimeWSBackend(server.ws), recording)
        assert result.stats.legs == 1
        return result.text

    text = asyncio.run(run())
    assert wer(recording.reference, text) < 0.2, text
    return text


def relay_url(relay: TcpRelay, server: ServerURL) -> str:
    return f"ws://127.0.0.1:{relay.port}{urlsplit(server.ws).path}"


# --------------------------------------------------------------------------- planned handovers


async def test_a_server_session_limit_is_met_by_handovers(
    short_server: ServerURL, recording: Recording, uninterrupted: str
) -> None:
    backend = RealtimeWSBackend(short_server.ws)
    result = await caption(backend, recording)
    assert result.stats.handovers >= 2, result.stats
    assert result.stats.reconnects == 0, result.stats
    assert result.notices and {n.kind for n in result.notices} == {"handover"}
    assert_continuous(result.text, uninterrupted, recording.reference)
    assert "session_too_long" not in short_server.log_text()


async def test_a_handover_waits_for_a_pause(
    server: ServerURL, recording: Recording, caplog: pytest.LogCaptureFixture
) -> None:
    """With a 20 s limit (a pause is sought in its last 7 s), each leg ends in one of the
    recording's pauses, not mid-word."""
    caplog.set_level("INFO", logger="components.continuity.chain")
    result = await caption(
        RealtimeWSBackend(server.ws), recording, policy=ContinuityPolicy(max_stream_seconds=20)
    )
    assert result.stats.handovers >= 2
    handovers = [r for r in caplog.records if "handing over" in r.getMessage()]
    assert len(handovers) == result.stats.handovers  # the chain's log is the one read here
    assert not [r for r in caplog.records if "mid-speech" in r.getMessage()]


class ListeningBackend:
    """The real backend, with the audio each of its streams was sent, and the options it was
    opened with, kept in order."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.sent: list[bytearray] = []
        self.options: list[SessionOptions] = []
        self.max_stream_seconds = getattr(backend, "max_stream_seconds", None)

    async def open(self, **kwargs: Any) -> Any:
        stream = await self.backend.open(**kwargs)
        self.options.append(kwargs["options"])
        heard = bytearray()
        self.sent.append(heard)
        real_send = stream.send_audio

        async def send_audio(pcm16: bytes) -> None:
            heard.extend(pcm16)
            await real_send(pcm16)

        stream.send_audio = send_audio
        return stream


async def test_a_new_leg_hears_the_last_seconds_before_it_with_their_words_forced(
    server: ServerURL, recording: Recording, uninterrupted: str
) -> None:
    """A leg that started right at speech, with no audio of the speaker before, would read
    its first words worst: each new leg first hears the old leg's last seconds again, with
    the words said in them (and the text before) given as known, not to be transcribed
    again. Nothing is said twice, nothing is lost."""
    backend = ListeningBackend(RealtimeWSBackend(server.ws))
    policy = ContinuityPolicy(max_stream_seconds=20)
    result = await caption(backend, recording, policy=policy)  # type: ignore[arg-type]
    assert result.stats.handovers >= 2
    assert backend.options[0].context_audio is None  # nothing was heard before the first leg
    shown = " ".join(result.text.split())
    for i, (before, after) in enumerate(itertools.pairwise(backend.sent), start=1):
        options = backend.options[i]
        heard = options.context_audio
        assert heard is not None and options.context
        size = round(heard.seconds * 16_000) * 2
        assert 4 * 16_000 * 2 <= size <= round(policy.context_audio * 16_000) * 2
        assert after[:size] == before[-size:]  # the same audio, sent to both legs
        forced = options.context.split()[-heard.words :]
        assert 3 <= len(forced) <= 40, forced
        assert options.context in shown, (options.context[-80:], shown)
    assert_continuous(result.text, uninterrupted, recording.reference)


async def test_without_audio_a_new_leg_hears_the_quiet_and_reads_the_text_before_it(
    server: ServerURL, recording: Recording, uninterrupted: str
) -> None:
    """With no audio from before (``context_audio=0``, or an engine that cannot read it),
    each new leg first gets the quiet the old one ended in, so that its first words are not
    the first thing it hears, and (``carry_context``) the transcript so far as its text
    context; no word is said twice."""
    backend = ListeningBackend(RealtimeWSBackend(server.ws))
    policy = ContinuityPolicy(max_stream_seconds=20, context_audio=0, carry_context=True)
    result = await caption(backend, recording, policy=policy)  # type: ignore[arg-type]
    assert result.stats.handovers >= 2
    assert result.stats.lead_in_samples > 0
    for before, after in itertools.pairwise(backend.sent):
        lead = round(policy.lead_in * 16_000) * 2
        assert after[:lead] == before[-lead:]  # the same audio, sent to both legs
        quiet = np.frombuffer(bytes(after[:lead]), "<i2").astype(np.float32) / 32768
        assert float(np.sqrt(np.mean(quiet**2))) < policy.pause_rms
    assert backend.options[0].context is None  # nothing was said before the first leg
    assert all(o.context_audio is None for o in backend.options)
    shown = " ".join(result.text.split())
    for options in backend.options[1:]:
        context = options.context
        assert context and len(context.split()) >= 5
        assert context in shown, (context[-80:], shown)  # shown before that leg's audio
    assert_continuous(result.text, uninterrupted, recording.reference)


sagemaker = sagemaker_fixture(front_args=("--max-stream-seconds", "15"))


async def test_sagemaker_streams_hand_over_before_the_front_ends_them(
    sagemaker: SageMakerSetup, recording: Recording, uninterrupted: str
) -> None:
    front = sagemaker.front
    with front.environ(SAGEMAKER_MAX_STREAM_SECONDS="15"):
        backend = front.backend()
        try:
            result = await caption(backend, recording)
        finally:
            await backend.aclose()
    assert result.stats.handovers >= 2, result.stats
    assert result.stats.reconnects == 0
    assert "reached 15 s" not in front.log_text()
    assert_continuous(result.text, uninterrupted, recording.reference)


async def test_a_stream_the_front_ends_is_continued_from_the_replay(
    sagemaker: SageMakerSetup, recording: Recording, uninterrupted: str
) -> None:
    """The client does not know the front's limit: the front ends each stream at 15 s (wall
    clock, about 30 s of audio here), and the replay buffer carries the audio over."""
    front = sagemaker.front
    with front.environ(SAGEMAKER_MAX_STREAM_SECONDS=None):
        backend = front.backend()
        try:
            result = await caption(backend, recording)
        finally:
            await backend.aclose()
    assert "reached 15 s" in front.log_text()
    assert result.stats.legs >= 2 and result.stats.lost_samples == 0, result.stats
    # Each stream the front ended was taken over from the replay, counted as such.
    assert result.stats.expired == result.stats.legs - 1 and result.stats.reconnects == 0
    assert not [n for n in result.notices if n.kind == "audio_lost"]
    assert_continuous(result.text, uninterrupted, recording.reference)


# --------------------------------------------------------------------------- losses


async def test_words_around_a_cut_connection_are_kept(
    server: ServerURL, recording: Recording, uninterrupted: str
) -> None:
    async with TcpRelay("127.0.0.1", server.port) as relay:
        backend = RealtimeWSBackend(relay_url(relay, server))
        result = await caption(backend, recording, at_second=cut_at(relay, 13.0, 31.0))
    assert relay.cuts == 2
    assert result.stats.reconnects == 2 and result.stats.lost_samples == 0, result.stats
    assert [n.kind for n in result.notices].count("reconnected") == 2
    assert_continuous(result.text, uninterrupted, recording.reference)


async def test_the_attempt_count_resets_after_a_stream_that_ran_well(
    server: ServerURL, recording: Recording
) -> None:
    """One failure allowed in a row: three cuts are survived, because each stream between
    them ran longer than ``good_stream_seconds``."""
    policy = ContinuityPolicy(max_failures=1, good_stream_seconds=2.0)
    async with TcpRelay("127.0.0.1", server.port) as relay:
        backend = RealtimeWSBackend(relay_url(relay, server))
        result = await caption(
            backend,
            recording,
            policy=policy,
            at_second=cut_at(relay, 10.0, 24.0, 38.0),
        )
    assert relay.cuts == 3
    assert result.stats.reconnects == 3, result.stats
    assert wer(recording.reference, result.text) < 0.25


async def test_a_backend_that_stays_down_ends_with_one_sentence(
    server: ServerURL, recording: Recording
) -> None:
    policy = ContinuityPolicy(max_failures=3, backoff_base=0.1, backoff_cap=0.2)
    async with TcpRelay("127.0.0.1", server.port) as relay:
        accepted: list[int] = []

        def down(t: float) -> None:
            if t >= 8.0 and not relay.refuse:
                relay.refuse = True
                relay.cut()
                accepted.append(relay.accepted)

        backend = RealtimeWSBackend(relay_url(relay, server))
        with pytest.raises(BackendError) as failure:
            await caption(backend, recording, policy=policy, at_second=down)
    message = str(failure.value)
    assert "could not be restored after 4 attempts" in message, message
    assert "\n" not in message and "Traceback" not in message
    assert accepted == [relay.accepted]  # every reconnection was refused


# --------------------------------------------------------------------------- pieces


def test_overlap_is_found_after_the_tail_is_covered() -> None:
    tail = "he could wait no longer for a full hour".split()
    new = "wait no longer for a full hour he had paced".split()
    assert overlap_words(tail, new[:3], complete=False) is None  # not yet decidable
    assert overlap_words(tail, new, complete=False) == 7
    # A word heard differently by the new leg still aligns on the rest.
    heard = "wait no longer for a fall hour he had paced up and down".split()
    assert overlap_words(tail, heard, complete=False) == 7
    # Nothing in common: nothing is dropped, even where single common words recur.
    assert overlap_words(tail, "stuff it into you".split(), complete=True) == 0
    brothels = "the squalid quarter of the brothels".split()
    god = "god as a direct consequence of the sin which man thus punished".split()
    assert overlap_words(brothels, god, complete=False) == 0
    assert overlap_words([], "anything".split(), complete=False) == 0


def test_the_replay_buffer_is_bounded_and_addressed_by_offset() -> None:
    buffer = ReplayBuffer(max_samples=1_000)
    for i in range(10):
        buffer.append(bytes([i, 0]) * 300)
    assert buffer.end == 3_000
    assert 1_000 <= buffer.end - buffer.start < 1_300
    begin, audio = buffer.read(0)
    assert begin == buffer.start and len(audio) == 2 * (buffer.end - begin)
    begin, audio = buffer.read(2_950, 2_990)
    assert begin == 2_950 and audio == bytes([9, 0]) * 40


@pytest.mark.parametrize("limit", [15.0, 1800.0])
def test_handover_points_leave_time_for_the_last_text(limit: float) -> None:
    seek, end = ContinuityPolicy().handover_points(limit)
    assert 0 < seek < end < limit
    assert limit - end >= min(10.0, 0.15 * limit) - 1e-9


def test_a_phrase_said_again_after_the_seam_is_not_taken_for_the_repeat() -> None:
    """The tail ends in an answer; the replayed audio holds it, then the answer once more. The
    new leg hears the first copy a little differently: only its first words are the repeat."""
    tail = "he could wait no longer go forward ten meters".split()
    misheard = "go forward 10 meters go forward ten meters why should one".split()
    assert overlap_words(tail, misheard, complete=False) is None  # "10" for "ten": wait
    assert overlap_words(tail, [*misheard, "halt", "on"], complete=False) == 4
    assert overlap_words(tail, misheard, complete=True) == 4
    exact = "go forward ten meters go forward ten meters".split()
    assert overlap_words(tail, exact, complete=False) == 4
    # The tail's last word alone, found later in the new words: not a repeat of the tail.
    assert overlap_words(["meters"], "go forward ten meters".split(), complete=True) == 0


def test_a_slow_replay_keeps_its_seam_open_until_it_passes_the_tail() -> None:
    """On a loaded machine the hold runs out while the new leg is still inside the replayed
    tail: what it said is dropped, and the rest of the tail is still recognised later."""
    tail = (
        "for a full hour he had paced up and down waiting but he could wait no longer "
        "after early nightfall the yellow lamps would light up here and there "
        "the squalid quarter of"
    ).split()
    seam = Seam(replay_from=0, tail=tail)
    seam.held = "wait no longer for a full hour he had paced up and down waiting but he "
    seam.held += "could wait no longer after early nightfall"
    assert seam.take(complete=True, expired=True) is None and not seam.resolved
    assert seam.tail[0] == "the" and len(seam.tail) == 13
    seam.held = " the yellow lamps would light up here and there the squalid quarter of the "
    seam.held += "brothels god as a direct consequence"
    assert seam.take(complete=False) == " the brothels god as a direct consequence"
    assert seam.dropped == 23 + 13


def test_a_tail_that_says_a_phrase_twice_is_repeated_whole() -> None:
    """The tail ends with a line it also said earlier ("he could wait no longer"). The new
    leg's first words match that ending early on; the repeat is all of the tail, not that."""
    tail = (
        "and thick peppered flowerfat and sauce stuffed it into you his belly counseled him "
        "he could wait no longer for a full hour he had paced up and down waiting but he "
        "could wait no longer"
    ).split()
    new = "the redcolored he could wait no longer for a full hour he had".split()
    assert overlap_words(tail, new, complete=False) is None  # not past the tail yet
    new += "paced up and down waiting but he could wait no longer after early nightfall".split()
    assert overlap_words(tail, new, complete=False) == len(new) - 3


def test_a_tail_from_a_lagging_engine_is_repeated_from_where_the_replay_starts() -> None:
    """The lost leg's engine was 10 s behind its audio: the tail (the words that arrived after
    the audio had reached the replay's start) begins 25 words before the replayed audio. The
    new leg's first words are found there, and the repeat is not taken for new speech."""
    tail = (
        "he had paced up and down waiting but he could wait no longer after early nightfall "
        "the yellow lamps would light up here and there the squalid quarter of the brothels "
        "god as a direct consequence of the sin which man"
    ).split()
    new = (
        "the squalid quarter of the brothels god as a direct consequence of the sin which man "
        "thus punished had given her a lovely child"
    ).split()
    assert overlap_words(tail, new, complete=False) == 16


def test_one_common_word_at_the_tails_end_decides_nothing() -> None:
    """The lost leg's text ended in "the"; the new leg's "the" three lines earlier is not its
    end: the seam waits for the tail's last words in a row."""
    tail = (
        "he could wait no longer after early nightfall the yellow lamps would light up here "
        "and there the squalid quarter of the"
    ).split()
    new = "could wait no longer after early nightfall the".split()
    assert overlap_words(tail, new, complete=False) is None
    new += "yellow lamps would light up here and there the squalid quarter of the brothels".split()
    assert overlap_words(tail, new, complete=False) == len(new) - 1
