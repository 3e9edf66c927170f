"""Which words of a streaming Whisper transcription are final, and which audio to decode next.

Whisper transcribes a window of audio at a time, and its guess about the newest words changes as
more audio arrives. This module decides, without any I/O, what is safe to show as append-only
text and which audio the next decode should see:

* **Local agreement.** Each decode yields a hypothesis; the words that all hypotheses of the
  last ``confirm_span`` seconds agree on (their common prefix: three hypotheses at half-second
  steps, two when steps are further apart; always reaching back at least a full step, so
  that short steps do not confirm words on nearly the same audio) are *committed* and never
  change again. The rest is the revisable *tail*, shown only as a partial. Words that wait longer
  than ``max_wait`` need only two agreeing hypotheses. Optionally, the words of a decode the
  decoder itself doubted (``unsure_logprob``) need the agreement of ``unsure_span`` seconds.
* **Committed text is forced, not re-decided.** Committed words inside the window are given to
  the decoder as a forced prefix, so a hypothesis is only the continuation of the committed
  text; committed words before the window go into the decoder's text prompt. The window can
  thus keep seconds of already-transcribed audio as acoustic context at little cost.
* **Trimming at segment ends.** Whisper marks segment (sentence) ends with timestamps. When
  the window grows past ``trim_at``, it is cut at a segment end whose words are all committed,
  keeping about ``keep_audio`` seconds after the cut as context, so a decode costs about the
  same after an hour as after a minute. A phrase longer than ``max_window`` without a
  committed segment end is cut between two of its committed words, found in the audio by
  alignment (an ``align`` request), at a pause if there is one.
* **Voice activity.** Audio without voice is not decoded (silence never turns into text), and
  the first decode of new speech waits for ``first_step`` of it. Before that, a *preview*
  decode after ``preview_step`` shows a first guess as the tail (partial only: it never
  commits and never counts towards agreement), so a viewer sees text within about a second
  of someone starting to talk. After ``commit_silence`` of
  silence the phrase is committed whole: from the latest hypothesis if that one heard all the
  speech, else after one more decode; a lone hypothesis the decoder itself called nearly
  certain silence (``NEAR_SILENCE``: the "you" it writes over an "uh") is dropped instead.
  The end of the audio commits the same way, except that speech after the latest decode's
  closed text gets a final decode of its own rather than being settled unheard. A decode
  whose text stops at a segment end while speech goes on restarts the window there (Whisper's
  own "seek"), and a backlog is decoded in windows that end in pauses between words.
* **Repetition guards.** Small Whisper models sometimes loop (the same words over and over)
  or echo their context, and people repeat themselves just as often. Text that repeats
  itself (counting the committed words it may have begun in) or ``echo_words`` words of
  recently committed text is a *suspect*, judged by the audio: kept if the new audio has room
  for its words at a human pace, cut where the repeat starts if it crowds them in (a loop or
  an echo). After a loop, the decoder gets no text prompt until the phrase is committed;
  when the forced prefix itself is what every decode loops on (a word made up over a noise
  and committed), the window's words stop being forced and its audio is read afresh, minus
  the words said again from its start.

Times are seconds from the start of the stream. The engine holds the audio samples; this class
holds only times and text, so it can be tested exhaustively with made-up hypotheses.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from components.engines.whisper.guards import (
    cut_echo,
    cut_repetition,
    cut_runs,
    is_loop,
    normalize_word,
)

EPS = 1e-6
"""Tolerance of time comparisons (durations are sums of floats)."""
SHARED_CONFIRM_SPAN = 0.5
"""Agreement span (s) of :meth:`PolicyConfig.shared`: two hypotheses in a row."""
SHARED_TRIM_AT, SHARED_KEEP_AUDIO, SHARED_MAX_WINDOW = 10.0, 4.0, 15.0
"""Window lengths (s) of :meth:`PolicyConfig.shared`: every stream's window is encoded in
every round, so a shared engine's lag grows with them."""
SHARED_WINDOWS = ("short", "long")
"""Windows of streams that share the engine: capped at the lengths above (the default), or
a lone stream's (more accurate, a quarter more engine time; see :meth:`PolicyConfig.shared`)."""
WORDS_PER_SECOND = 6.0
"""Faster than anyone speaks: bounds the words new audio can add to a hypothesis."""
EDGE_WORDS = 4
"""Words a hypothesis may hold beyond its estimate (the last decode may have left words at
the edge of its audio unsaid, and a word can split into two)."""
REPEAT_RATE = 4.0
"""Words per second a repeated phrase may take of new audio and still count as speech: brisk
speech (the evaluation set's fastest clip runs at 4 words a second); echoes and loops crowd
more words into the audio, up to the decode's word limit (``WORDS_PER_SECOND``)."""
MIN_SPEECH_RATE = 1.0
"""Words per second of voice below which a prompted decode skipped speech (people say two to
four words in each second of voice; a decoder that has a passage in its context may skip
the same passage said again)."""
SKIP_MIN_VOICE = 4.0
"""Seconds of voice a window needs before its word count is judged (short ones vary)."""
REPEAT_EDGE_WORDS = 1
"""Words a repeat may hold beyond the room ``REPEAT_RATE`` gives it (a word at the edge of the
previous decode's audio)."""
UNREAD_VOICE = 0.3
"""Seconds of voice after a cut decode's text that are decoded again rather than skipped
(a word or two; less is the tail of the last word or a breath)."""
UNREAD_PHRASE_VOICE = 0.5
"""Seconds of voice after a decode's closed text that keep a pause from settling the phrase
(a word or two the decoder left out; less is often the tail of its last word)."""
NEAR_SILENCE = 0.95
"""No-speech probability above which a lone hypothesis is the decoder's guess at a noise, not
speech: Whisper writes "you" or "Thank you." over a cough or an "uh" with a probability of
0.97 that nothing was said. Real speech, even with a cold in a noisy room, stays below 0.9 in
the evaluation set."""
PREFIX_LOOPS = 3
"""Decodes in a row that loop on the forced prefix and keep nothing before it is no longer
forced (one or two such decodes happen over real speech: "words words words words")."""
CONTEXT_WORDS = 64
"""Words of a stream's context (the text said before its audio) that are kept: more than the
decoder's text prompt holds (``prompt_chars``) and than the guards look back."""
LONGEST_WORD = 1.2
"""Seconds a word lasts at most, as far as an alignment of words with audio is believed (the
last word of a text that stops before the speech does is aligned over the rest of it)."""
GLUE = "\u2060"
"""Marks a word that continues the previous one (the decoder went on without a space)."""


def join_words(words: list[str]) -> str:
    """Words as text: one space between them, none before a glued continuation."""
    out: list[str] = []
    for w in words:
        if w.startswith(GLUE):
            out.append(w[len(GLUE) :])
        else:
            out.append(f" {w}" if out else w)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Tuning of the streaming policy (the engine exposes the main ones as env variables)."""

    min_step: float = 0.5
    """New audio (s) that makes another decode worthwhile."""
    first_step: float = 1.0
    """Audio (s) after the onset of speech before its first decode (shorter guesses are
    mostly wrong, and two wrong guesses can agree)."""
    preview_step: float = 0.3
    """Audio (s) after the onset of speech at which a preview decode shows a first guess as
    the tail, before the first real step (0 turns previews off). Through the page, 0.3 s put
    the first correct word on screen 0.96 s after speech began (median of six clips; 1.11 s
    at 0.5 s), with the same final text: a preview never commits."""
    trim_at: float = 16.0
    """Window length (s) above which the window is cut at a committed segment end.

    Longer windows give the decoder more acoustic context: Whisper's encoder hears a whole
    window at once, and the more of a hard speaker it hears, the better it reads every part.
    Cut at 16 s keeping 8 s rather than at 10 s keeping 4 s, the conversation set read
    1.06-1.15 times the offline WER in real time instead of 1.47 (three runs), with the same
    caption lag. A stream chain's new legs hear the seconds before their seam
    (``heard_before``), so they start with that context too. Shared windows stay shorter
    (:meth:`shared`)."""
    keep_audio: float = 8.0
    """Audio (s) preferably kept after such a cut, as context for the next decodes."""
    max_window: float = 20.0
    """Longest window (s); past it the window is cut at any segment end, or by force."""
    commit_silence: float = 1.0
    """Silence (s) after speech that ends a phrase: commit it whole."""
    speech_pad: float = 0.8
    """Audio (s) a fresh window keeps before the speech the voice detector heard: soft first
    words ("and here's a ...") often sound before the detector is sure. On the evaluation
    set replayed on a fixed schedule, 0.8 s gave fewer errors than 0.4 s or 1.2 s, alone and
    shared."""
    prompt_chars: int = 200
    """Committed text (characters) given to the decoder as context from before the window."""
    confirm_span: float = 1.0
    """A word is committed when every hypothesis of the last ``confirm_span`` seconds (at
    least the previous one) agrees on it: three at half-second steps (more accurate than two
    at one-second steps, at the same lag), two when a busy engine steps less often, which
    keeps the lag bounded at some cost in accuracy."""
    max_wait: float = 1.5
    """Audio (s) unconfirmed words may wait for a full ``confirm_span`` agreement; after that,
    two agreeing hypotheses commit them (bounds the lag of hard passages)."""
    unsure_logprob: float = -0.4
    """Mean token log-probability of a decode below which the decoder doubted its words (one
    in six of the conversation set's long case; a hoarse speaker's every decode, -0.55 to
    -0.62, read "sixth form this" for "sick corpus")."""
    unsure_span: float = 1.0
    """Agreement span (s) for the words of a doubted decode; the words that waited
    ``max_wait`` wait as much longer for two hypotheses to agree. Above ``confirm_span`` it
    trades lag for accuracy on hard passages (off by default, see docs/streaming.md)."""
    voice_margin: float = 0.25
    """Voice detected up to this long after committed speech still counts as that speech."""
    hold_last_word: bool = False
    """Never commit the newest word of an open hypothesis until a later word follows it."""
    max_repeats: int = 3
    """A phrase repeated this many times in a row (one word: one time more) is a loop."""
    echo_words: int = 8
    """A hypothesis repeating this many words of recent committed text is an echo."""
    backlog_window: float = 25.0
    """Longest window (s) for decoding a backlog (audio that arrived faster than it could be
    decoded: a file, a replay, an engine that fell behind). Whisper reads 30 s at a time; a
    backlog cut into windows near that length reads like the offline transcript of it."""
    boundary_margin: float = 0.5
    """A segment end counts as a cut point only with this much decoded audio after it."""

    def shared(self, windows: str = "short") -> PolicyConfig:
        """This policy for an engine that several streams share: a word is confirmed by the
        hypotheses of the last half second rather than of the last second.

        A busy engine steps each stream at uneven intervals, and a full second of agreement
        adds more lag than certainty there: in real time at six streams, agreement over a
        second (or 0.8 s) gave the same WER (0.081-0.087) with lag p95 2.1-2.7 s against
        1.9-2.0 s. The agreeing hypotheses still reach back a whole step (see
        ``StreamingPolicy._agreement``): three at the 0.4 s steps a shared engine takes.

        With ``windows="short"`` (the default, ``SHARED_WINDOWS``) the windows are cut at
        10 s keeping 4 s at most, whatever a lone stream's are; ``"long"`` keeps a lone
        stream's. Every second of a window is encoded, and each committed word in it forced
        through the decoder one step at a time, for every stream in every round. Six
        streams on two cores, long windows against short: WER 1.09-1.12 times the clips'
        offline WER against 1.32 (two real-time runs each; 0.074 against 0.085 on fixed
        schedules, four shifts), for a quarter more engine time, which on two cores puts
        the lag p95 at 2.8-3.0 s against 2.1 s. Long windows are for a machine with the
        cores to spare (docs/streaming.md). Very short shared windows (cut at 3 s, keeping
        1 s) take the acoustic context a noisy or spontaneous clip needs: six streams on a
        fixed schedule gave WER 0.095 against 0.073 with 10 s windows.
        """
        if windows not in SHARED_WINDOWS:
            raise ValueError(f"shared windows must be one of {', '.join(SHARED_WINDOWS)}")
        span = min(self.confirm_span, SHARED_CONFIRM_SPAN)
        shared = dataclasses.replace(self, confirm_span=span, unsure_span=span)
        if windows == "long":
            return shared
        return dataclasses.replace(
            shared,
            trim_at=min(self.trim_at, SHARED_TRIM_AT),
            keep_audio=min(self.keep_audio, SHARED_KEEP_AUDIO),
            max_window=min(self.max_window, SHARED_MAX_WINDOW),
        )

    def __post_init__(self) -> None:
        if self.min_step <= 0:
            raise ValueError("min_step must be positive")
        if not 0 < self.keep_audio < self.trim_at <= self.max_window:
            raise ValueError("need 0 < keep_audio < trim_at <= max_window")
        if max(self.max_window + self.min_step, self.backlog_window) > 28.0:
            raise ValueError("windows must stay under 28 s (Whisper's window)")
        if self.commit_silence <= 0 or self.speech_pad < 0:
            raise ValueError("commit_silence must be positive and speech_pad not negative")
        if self.preview_step < 0:
            raise ValueError("preview_step must not be negative")
        if self.confirm_span <= 0 or self.max_wait <= 0 or self.unsure_span <= 0:
            raise ValueError("confirm_span, unsure_span and max_wait must be positive")
        if self.prompt_chars < 0 or self.max_repeats < 2 or self.echo_words < 2:
            raise ValueError("prompt_chars must be >= 0, max_repeats and echo_words >= 2")


@dataclass(frozen=True, slots=True)
class DecodeRequest:
    """Decode audio ``[start, end)`` continuing ``prefix``, with ``prompt`` as context."""

    start: float
    end: float
    prompt: str
    """Committed text before the window (context, not transcribed again)."""
    prefix: str
    """Committed text inside the window (forced as the start of the transcription)."""
    kind: str = "step"
    """``step`` (agreement step), ``preview`` (a first guess, shown but never committed),
    ``align`` (no new text: where in the audio the words of ``prefix`` lie) or a final kind,
    which commits without agreement:
    ``phrase`` (the speaker paused), ``end`` (the audio ended), ``cut`` (the window grew too
    long while the engine was busy: decode its oldest part)."""
    max_words: int | None = None
    """Most words the continuation can hold (the unconfirmed words plus what the new audio
    can add), None if unknown. Text past it is a loop: a decoder may stop there."""

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def final(self) -> bool:
        return self.kind not in ("step", "preview", "align")


@dataclass(frozen=True, slots=True)
class Piece:
    """Text between two segment boundaries of a hypothesis (times relative to the window).

    The first piece continues the segment the forced prefix began. ``end`` is the time of
    the boundary closing the piece, None when the decoder left it open (speech going on).
    """

    text: str
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True, slots=True)
class Hypothesis:
    """What one decode produced after the forced prefix."""

    pieces: tuple[Piece, ...]
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
    text_end: float | None = None
    """Where the text of an open last piece stops in the window (s), if the engine measured
    it (it does for final requests): lets a decode that stopped early resume there."""
    spans: tuple[tuple[float, float], ...] | None = None
    """For an ``align`` request: (start, end) in the window (s) of each space-separated word
    of the prefix, None if the engine could not tell."""

    @classmethod
    def of(cls, *texts: str, ends: tuple[float | None, ...] = ()) -> Hypothesis:
        """Pieces from texts with optional boundary times (handy in tests)."""
        return cls(
            tuple(Piece(t, None, ends[i] if i < len(ends) else None) for i, t in enumerate(texts))
        )


@dataclass(frozen=True, slots=True)
class Update:
    """What changed after a decode: newly committed text and the current tail."""

    delta: str
    """Append-only text to send now ('' if nothing new was committed)."""
    partial: str | None
    """The new unconfirmed tail, or None if it did not change."""


def says_no_speech(hypothesis: Hypothesis) -> bool:
    """Whisper's own judgement that a decode heard no speech (its thresholds)."""
    return hypothesis.no_speech_prob > 0.6 and hypothesis.avg_logprob < -1.0


@dataclass
class StreamingPolicy:
    """The streaming state of one session: committed words, tail, window and voice times.

    Use: ``push()`` as audio arrives (with the voice detector's latest voiced time),
    ``request()`` for the decode to run now (None if none), ``apply()`` with its hypothesis,
    ``finish()`` at the end of the audio, until ``done``.
    """

    config: PolicyConfig = field(default_factory=PolicyConfig)
    previews: bool = True
    """Whether to run preview decodes (worth their cost only if someone reads partials)."""
    context: list[str] = field(default_factory=list)
    """Words said before the stream's audio (a previous stream's transcript, when a long
    session continues on a new stream): text context for the first decodes, as the committed
    words before the window are later, and for the repetition guards; never transcribed."""
    terms: frozenset[str] = frozenset()
    """The session's names and terms (its prompt) as normalised words. The decoder reads them
    before every window, and a small model sometimes loops on the last of them over audio
    that says something else ("Boston, Boston, Boston, ..." before "Yet these thoughts ...")."""
    committed: list[str] = field(default_factory=list)
    """Every committed word, in order (the transcript is their join)."""
    tail: list[str] = field(default_factory=list)
    """Unconfirmed words of the latest hypothesis, after the committed ones."""
    history: list[tuple[float, list[str]]] = field(default_factory=list)
    """(audio end, unconfirmed words) of the latest hypotheses, oldest first (the newest is
    the tail)."""
    window_start: float = 0.0
    window_words: int = 0
    """How many of the last committed words lie inside the window (the forced prefix)."""
    audio_end: float = 0.0
    last_voice: float | None = None
    """End of the latest audio the voice detector called speech."""
    settled_until: float = 0.0
    """Everything said before this time is committed."""
    decoded_until: float = 0.0
    covered_until: float = 0.0
    """The speech before this time is in the committed words or the tail (a decode that
    stopped early, at a segment end, leaves the speech after that end uncovered)."""
    onset: float = 0.0
    """Where the current run of uncommitted speech began (approximately)."""
    heard_until: float = 0.0
    """End of the audio whose words a previous stream said (:meth:`heard_before`): speech
    that runs on from it begins, for the repetition guard, no earlier than this."""
    waiting_since: float = 0.0
    """Audio time since which the unconfirmed words have waited for a commit."""
    finished: bool = False
    forced_cuts: int = 0
    """Windows cut without a segment boundary (a word at the cut may be lost or doubled)."""
    gaps: list[float] = field(default_factory=list)
    """Pauses between words inside the window (from the voice detector)."""
    cuts: list[tuple[float, int]] = field(default_factory=list)
    """Committed segment ends of the latest hypothesis: (time, committed words before it)."""
    previewing: bool = False
    """The tail comes from a preview decode (not a hypothesis agreement may use)."""
    preview_end: float = -1.0
    """Audio end of the latest preview (another comes only with new audio, if that one
    showed no words)."""
    repeats_judged: int = 0
    """Hypotheses whose text repeated itself or recent committed text (loop or echo suspects)."""
    dropped_guesses: int = 0
    """Lone hypotheses of a noise (``NEAR_SILENCE``) not committed at the end of a phrase."""
    unread_resumed: int = 0
    """Pauses that found speech after the latest decode's text and decoded it (see
    :meth:`settle`)."""
    repeats_kept: int = 0
    """Of those, the ones the audio had room for: kept as speech."""
    final_stop: float = -1.0
    """Where the latest final decode's text stopped short of the speech (-1: none): the next
    final decode continues after its words, and must get further to be continued again."""
    retried: bool = False
    """A final decode of this stretch heard less than the voice detector did (no speech, or
    too few words for the speech): it was decoded once more, without the text prompt."""
    voiced_marks: list[tuple[float, float]] = field(default_factory=list)
    """(audio end, seconds of voice so far) at each push inside the window: how much speech
    a stretch of the window holds."""
    tail_no_speech: float = 0.0
    """The no-speech probability of the decode that gave the tail."""
    text_until: float | None = None
    """Where the latest decode's text ended in the audio (its last segment's end), None if it
    ran on to the end of the audio or said nothing of where it stopped."""
    after_cut: bool = False
    """The decode before the latest one was guarded (see :meth:`_audio_holds`)."""
    guarded: bool = False
    """The latest decode's words were cut by a loop or echo guard: its text says nothing of
    the audio after the cut, which is therefore not counted as decoded."""
    respoken: list[str] = field(default_factory=list)
    """Committed words whose audio is in the window but which are no longer its forced prefix
    (the prefix led the decoder into a loop), and the words committed after them until the
    window moves: every decode reads the window from its start, and the words it says
    again are dropped from its start."""
    prefix_loops: int = 0
    """Decodes in a row (up to the latest) that looped on the forced prefix and kept no word
    of their own."""
    unprompted: bool = False
    """A hypothesis looped: decode without the text prompt until the phrase is committed.
    Earlier text is what most often leads a small model into a loop, and it tends to loop
    again on the same prompt (Whisper itself drops the prompt after such a decode)."""
    inherited: int = 0
    """Leading committed words that a previous stream transcribed (see :meth:`heard_before`):
    forced and looked back on like the stream's own, never sent again."""
    locating: bool = False
    """The words given end somewhere in the audio heard before, not where it ends (a lost
    stream's, see :meth:`heard_before`): the first request finds where (``align``)."""

    # ------------------------------------------------------------------ input

    def heard_before(self, seconds: float, words: Sequence[str], *, complete: bool = True) -> None:
        """The stream's first ``seconds`` of audio were transcribed before: ``words`` are
        what was said in them (a few words more are harmless, they read as said just before).

        A stream continuing another one (a long session on a new connection) would otherwise
        start where a decoder reads worst, at speech it has no audio before: the window
        starts with that audio instead and the words are its forced prefix, as they would be
        in one stream. Audio beyond what a trimmed window keeps is skipped, its words still
        forced (more words than audio are harmless, fewer are not).

        Not ``complete``: the previous stream was lost before it said the last words of that
        audio, and where its words end in it is not known. All of it stays in the window, and
        the first request, once it is all here, aligns ``words`` with it: the audio after
        their last word is what this stream has to say (speech there is decoded, continuing
        after ``words``; silence there is settled). Decoding the whole window instead, from
        its start, asks the decoder to continue words that may have ended seconds before, in
        a pause: it made words up there ("The", "the black woman") and read the speech after
        the pause wrong.
        """
        if self.audio_end or self.committed:
            raise RuntimeError("heard_before() must come before any audio")
        if seconds <= 0 or not words:
            return
        self.committed = list(words)
        self.inherited = self.window_words = len(self.committed)
        self.onset = self.heard_until = seconds  # repeats of the words given are judged
        # by the audio after them, also when that audio runs on from theirs
        if not complete:
            self.locating = True  # all of it stays until the words are found in it
            return
        self.window_start = max(0.0, seconds - (self.config.trim_at - self.config.first_step))
        self.settled_until = self.covered_until = self.decoded_until = seconds

    def push(
        self,
        duration: float,
        last_voice: float | None = None,
        gaps: Sequence[float] = (),
        starts: Sequence[float] = (),
        voiced: float | None = None,
    ) -> None:
        """Audio of ``duration`` seconds arrived.

        ``last_voice`` is the end of the latest speech the voice detector heard; ``gaps`` are
        times of pauses between words it found in this audio (safe places to cut),
        ``starts`` the times where runs of speech began in it, and ``voiced`` how many of its
        seconds were speech.
        """
        if self.finished:
            raise RuntimeError("audio pushed after finish()")
        if duration < 0:
            raise ValueError("duration must not be negative")
        before, was_pending = self.audio_end, self.pending_voice
        self.audio_end += duration
        if voiced is not None:
            total = self.voiced_marks[-1][1] if self.voiced_marks else 0.0
            if not self.voiced_marks or self.voiced_marks[-1][0] < before:
                self.voiced_marks.append((before, total))
            self.voiced_marks.append((self.audio_end, total + voiced))
            while len(self.voiced_marks) > 1 and self.voiced_marks[1][0] <= self.window_start:
                del self.voiced_marks[0]
        if last_voice is not None:
            self.last_voice = min(last_voice, self.audio_end)
        self.gaps = [g for g in self.gaps if g > self.window_start]
        self.gaps += [g for g in gaps if self.window_start < g <= self.audio_end]
        if self.pending_voice and not was_pending:
            # Speech started in this audio, or up to the voice margin before it.
            began = min(starts, default=before)
            self.onset = max(self.settled_until, self.heard_until, began - self.config.voice_margin)
            start = began - self.config.speech_pad
            if starts and self.window_words == 0 and start > self.window_start:
                # A fresh window starts ``speech_pad`` before the speech, however much
                # silence the last round left in it: the pad must not depend on how the
                # audio was cut into rounds.
                self._move_window(start, len(self.committed))

    def finish(self) -> None:
        """The audio has ended: the next request commits whatever is left."""
        self.finished = True

    # ------------------------------------------------------------------ state

    @property
    def transcript(self) -> str:
        return join_words(self.committed[self.inherited :])

    @property
    def window(self) -> float:
        return self.audio_end - self.window_start

    @property
    def pending_voice(self) -> bool:
        """Whether speech arrived that is not committed yet."""
        return (
            self.last_voice is not None
            and self.last_voice > self.settled_until + self.config.voice_margin
        )

    @property
    def silence(self) -> float:
        """Seconds since the latest speech (infinite before any)."""
        if self.last_voice is None:
            return float("inf")
        return self.audio_end - self.last_voice

    @property
    def undecoded(self) -> float:
        """Audio (s) that arrived after the last decode."""
        return self.audio_end - self.decoded_until

    @property
    def done(self) -> bool:
        """Finished, and nothing is left to decode."""
        return self.finished and not self.pending_voice and not self.tail

    @property
    def listening(self) -> bool:
        """Nothing is on screen unconfirmed and no decode is running ahead: the stream is
        silent or its speech has only just begun (worth looking at its audio often)."""
        return not self.tail and (not self.pending_voice or self._warming_up())

    def due(self, min_new: float | None = None) -> bool:
        """Whether a decode should run now, given ``min_new`` s of new audio (default step)."""
        step = self.config.min_step if min_new is None else min_new
        if self.locating:
            return self.audio_end >= self.heard_until - EPS
        if self._too_long():
            return True
        if not self.pending_voice and not self.tail:
            return False
        if self.finished or self._paused():
            return True
        if self._preview_due():
            return True
        if self._warming_up() or self._heard_all():
            return False
        return self.undecoded >= step - EPS

    def _heard_all(self) -> bool:
        """The latest decode heard all the speech so far: more silence would add nothing
        (the pause then commits the tail, see :meth:`settle`)."""
        return (
            self.last_voice is not None
            and self.decoded_until >= self.last_voice + self.config.voice_margin - EPS
        )

    def _warming_up(self) -> bool:
        """Speech began in a window without context less than ``first_step`` ago."""
        return self.window_words == 0 and self.audio_end - self.onset < self.config.first_step - EPS

    def _preview_due(self) -> bool:
        """Speech began less than ``first_step`` ago, long enough ago for a first guess
        (``preview_step`` from the onset, which lies a voice margin before the speech)."""
        return (
            self.previews
            and self.config.preview_step > 0
            and self.pending_voice
            and not self.tail
            and self.audio_end > self.preview_end + EPS
            and self._warming_up()
            and self.last_voice is not None
            and self.last_voice - self.onset >= self.config.preview_step - EPS
        )

    def _too_long(self) -> bool:
        return self.window > self.config.max_window + self.config.min_step + EPS

    def _paused(self) -> bool:
        return self.silence >= self.config.commit_silence - EPS

    # ------------------------------------------------------------------ decisions

    def settle(self) -> Update | None:
        """Commit the tail without decoding, if the speech is over and was all decoded.

        When the audio has ended (or the speaker paused for ``commit_silence``) and the latest
        decode already covered all the speech, its tail is the final word on it: decoding the
        same speech once more would cost time and could only add words invented over silence.
        """
        if self._too_long() or self.previewing or not (self.finished or self._paused()):
            return None
        if self.last_voice is None or not (self.tail or self.pending_voice):
            return None
        if self.decoded_until < self.last_voice + self.config.voice_margin - EPS:
            return None
        base, old_tail = len(self.committed), self.tail
        unread = self._unread_at_pause()
        if unread is not None:
            # The decoder closed its text before the speech ended ("... his belly" over
            # "... his belly counselled him", the same sentence said again a second later):
            # settling would drop the rest unheard. Its words are committed and the rest
            # gets a final decode of its own, with them as the prompt.
            self._commit(self.tail)
            self.tail, self.history = [], []
            self._move_window(unread, len(self.committed))
            self.covered_until = self.decoded_until = unread
            self.unread_resumed += 1
            return self._update(base, old_tail)
        if sum(1 for _, h in self.history if h) <= 1 and self.tail_no_speech >= NEAR_SILENCE:
            # One decode, nearly sure it heard nothing: a noise's words, never confirmed.
            # Committed, they would become the forced prefix of the speech that follows and
            # lead its decodes astray.
            self.tail, self.history = [], []
            self.settled_until = max(self.settled_until, self.decoded_until)
            self.dropped_guesses += 1
            return self._update(base, old_tail)
        self._commit(self.tail)
        self.tail, self.history = [], []
        self.unprompted = False
        self.settled_until = max(self.settled_until, self.decoded_until)
        return self._update(base, old_tail)

    def request(self) -> DecodeRequest | None:
        """The decode to run now, or None. Drops settled silence from the window.

        Call :meth:`settle` first: a phrase or stream that needs no further decode is then
        committed without one.
        """
        if self.locating:
            if self.audio_end < self.heard_until - EPS:
                return None  # the audio heard before is not all here yet
            return self._make_request("align", end=self.heard_until)
        if self._too_long():
            if self.window_words:
                # A long phrase without a committed segment end: find where its committed
                # words lie, to cut the window between two of them.
                return self._make_request("align", end=self.decoded_until)
            # Fell behind (the engine was busy): decode the oldest part first, up to a pause
            # if there is one, so that no word is split.
            end = self.window_start + max(self.config.max_window, self.config.backlog_window)
            end = min(end, self.audio_end)
            pauses = [g for g in self.gaps if self.window_start + 1.0 < g <= end]
            return self._make_request("cut", end=pauses[-1] if pauses else end)
        if not self.pending_voice and not self.tail:
            self._drop_silence()
            return None
        if self.finished:
            return self._make_request("end")
        if self._paused():
            return self._make_request("phrase")
        if self._preview_due():
            self.preview_end = self.audio_end
            return self._make_request("preview")
        if self.undecoded <= 0 or self._warming_up() or self._heard_all():
            return None
        return self._make_request("step")

    def _make_request(self, kind: str, *, end: float | None = None) -> DecodeRequest:
        n_before = len(self.committed) - self.window_words
        prefix = join_words(self.committed[n_before:]).lstrip()
        room = self.config.prompt_chars
        prompt = ""
        if room > 0 and (n_before or self.context) and not self.unprompted:
            said = self.committed[max(0, n_before - room) : n_before]
            if len(said) < room:
                said = self.context[len(said) - room :] + said
            before = join_words(said)
            prompt = before[-room:]
            if len(prompt) < len(before) and " " in prompt:
                prompt = prompt.split(" ", 1)[1]  # start at a word boundary
        end = self.audio_end if end is None else end
        max_words = None
        if kind in ("step", "phrase", "end"):
            new = max(0.0, end - max(self.covered_until, self.window_start))
            max_words = len(self.tail) + math.ceil(WORDS_PER_SECOND * new - EPS) + EDGE_WORDS
        return DecodeRequest(
            start=self.window_start,
            end=end,
            prompt=prompt,
            prefix=prefix,
            kind=kind,
            max_words=max_words,
        )

    def _drop_silence(self) -> None:
        """All speech is committed: a long window keeps only a pad before the present.

        A window holding no committed words (the silence before anyone spoke) is cut back at
        once: silence is no context, and the first decode of new speech should not pay for
        seconds of it (nor be tempted to fill it with words).
        """
        if self.window <= (
            self.config.speech_pad if not self.window_words else self.config.trim_at
        ):
            return
        new_start = self.audio_end - self.config.speech_pad
        if self.last_voice is not None:
            new_start = max(new_start, self.last_voice)
        if new_start > self.window_start:
            self._move_window(new_start, len(self.committed))

    def _free_prefix(self) -> None:
        """Stop forcing the window's committed words as the decoder's prefix: they lead it
        into a loop (a word it made up over a noise, committed by two hypotheses that both
        began with it, then every decode says it again and again and keeps nothing, until the
        phrase's end settles seconds of speech unheard). The window keeps its audio; the next
        decodes read it afresh, and a hypothesis that says those words again has them
        dropped from its start (``respoken``), so that real words are not said twice."""
        inside = self.committed[len(self.committed) - self.window_words :]
        self.respoken = self.respoken + inside  # the window's audio holds both
        self.window_words = self.prefix_loops = 0
        self.cuts = []
        self.tail, self.history = [], []

    def _move_window(self, start: float, committed_before: int) -> None:
        self.respoken = []
        self.window_start = start
        self.gaps = [g for g in self.gaps if g > start]
        self.window_words = len(self.committed) - committed_before
        self.settled_until = max(self.settled_until, start)
        self.cuts = [c for c in self.cuts if c[0] > start]

    def words_of(self, request: DecodeRequest, hypothesis: Hypothesis) -> list[list[str]]:
        """The hypothesis as words per piece, without loops, echoes or text past the audio.

        A loop also turns the text prompt off for the rest of the phrase (``unprompted``).
        """
        self.after_cut, self.guarded = self.guarded, False
        if says_no_speech(hypothesis):
            self.prefix_loops = 0
            return []
        pieces: list[list[str]] = []
        for i, piece in enumerate(hypothesis.pieces):
            if i and piece.start is not None and piece.start >= request.duration - 0.1:
                break  # a segment starting after the audio is invented
            words = piece.text.split()
            if i == 0 and words and request.prefix and not piece.text[0].isspace():
                words[0] = GLUE + words[0]  # continues the prefix's last word
            pieces.append(words)
        if self.respoken:
            said = _said_again([w for p in pieces for w in p], self.respoken)
            pieces = _drop_leading(pieces, said)
        flat = [w for p in pieces for w in p]
        # A glued loop ("the...the...the") is never speech.
        flat_end = next((i for i, w in enumerate(flat) if is_loop(w)), len(flat))
        # A loop may start in the committed text ("go forward" committed, "go forward" again).
        recent = self._said(16)
        reps = self.config.max_repeats
        # One word said over and over (five times and more) is a loop whatever the audio: a
        # stutter or a chant of one word is no caption, a decoder's loop often is.
        stutter = cut_repetition(recent + flat[:flat_end], reps, 1, after=len(recent))
        # Likewise a phrase said more than ``max_repeats`` times in a row ("thank you" six
        # times over a noisy passage): people repeat a line, rarely four times on end.
        chant = cut_runs(
            recent + flat[:flat_end], lambda n: reps + 1, after=len(recent), min_ngram=2
        )
        cut = min(len(stutter), len(chant)) - len(recent)
        if cut < flat_end:
            flat_end = cut - self._term_loop(request, flat, cut)
            self.unprompted = True
        looped = cut_repetition(recent + flat[:flat_end], reps, after=len(recent), min_ngram=2)
        loop_at = len(looped) - len(recent)
        echo_at = len(cut_echo(flat[:flat_end], self._said(40), self.config.echo_words))
        suspect = min(loop_at, echo_at, flat_end)
        kept = flat[:flat_end]
        if suspect < flat_end and not self._audio_holds(request, flat_end):
            kept = flat[:suspect]
            if loop_at == suspect:
                self.unprompted = True
        elif flat_end < len(flat):
            self.unprompted = True
        if suspect < flat_end:
            self.repeats_judged += 1
            if len(kept) == flat_end:
                self.repeats_kept += 1
        # Nothing of its own, only the prefix said over and over (a loop whatever the audio;
        # a repeat the audio may yet hold is only a suspect): the prefix itself, often a word
        # the decoder made up over a noise ("A." committed twice), leads every decode of this
        # window into the same loop. See ``_free_prefix``.
        looped_on_prefix = bool(flat) and flat_end == 0 and self.window_words > 0
        self.prefix_loops = self.prefix_loops + 1 if looped_on_prefix else 0
        if len(kept) < len(flat):
            self.guarded = True
            left = len(kept)
            out: list[list[str]] = []
            for p in pieces:
                if left <= 0:
                    break
                out.append(p[:left])
                left -= len(p)
            pieces = out
        return pieces

    def _term_loop(self, request: DecodeRequest, flat: list[str], cut: int) -> int:
        """How many words before ``cut`` (the first copy of a loop the guards cut) to drop too:
        the whole copy, when it is made of the session's terms and the loop crowds more words
        into the audio than it has room for.

        The guards keep a loop's first copy, since the loop usually began on a word that was
        said. A loop on the terms began in the decoder's context instead: kept, two such
        decodes agreed on a word nobody said. A person who says a term over and over takes
        the time of the words, and keeps it.
        """
        if not self.terms or cut <= 0:
            return 0
        norm = [normalize_word(w) for w in flat]
        for n in range(1, min(cut, 8) + 1):
            unit = norm[cut - n : cut]
            if unit == norm[cut : cut + n] and all(w in self.terms for w in unit):
                return 0 if self._audio_holds(request, len(flat)) else n
        return 0

    def voiced(self, start: float, end: float) -> float | None:
        """Seconds of voice the detector heard in ``[start, end)`` (None if it did not say)."""
        marks = self.voiced_marks
        if not marks or marks[0][0] > start + 1.0:
            return None

        def at(t: float) -> float:
            i = bisect.bisect_left(marks, (t, -1.0))
            if i >= len(marks):
                return marks[-1][1]
            if i == 0:
                return marks[0][1]
            (t0, v0), (t1, v1) = marks[i - 1], marks[i]
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1

        return max(0.0, at(end) - at(start))

    def _heard_less(self, request: DecodeRequest, hypothesis: Hypothesis) -> bool:
        """Whether a decode left out speech the voice detector heard: it says "no speech"
        over voice, or a window without committed words holds far fewer words than its
        speech would (``MIN_SPEECH_RATE``)."""
        if not self.pending_voice:
            return False
        if says_no_speech(hypothesis):
            return True
        if self.window_words or not request.prompt:
            return False
        voiced = self.voiced(request.start, request.end)
        if voiced is None or voiced < SKIP_MIN_VOICE:
            return False
        words = sum(len(p.text.split()) for p in hypothesis.pieces)
        return words < MIN_SPEECH_RATE * voiced

    def _audio_holds(self, request: DecodeRequest, words: int) -> bool:
        """Whether the audio has room for ``words`` continuation words spoken at a human pace.

        A repeated phrase is either speech (people repeat themselves: answers, emphasis, a
        line read back) or the decoder's doing (a loop, an echo of its context). Text alone
        cannot tell them apart; the audio can: a real repeat takes the time of its words in
        audio no earlier hypothesis accounted for, where an echo or a loop crowds words into
        too little audio (up to the decode's word limit). The unconfirmed tail accounts for
        the audio up to the previous decode's end; when an earlier suspect was cut, the
        words lie somewhere in the speech that began after the committed words.
        """
        began = max(self.settled_until, self.onset, request.start)
        new = max(0.0, request.end - max(self.covered_until, began))
        room = len(self.tail) + REPEAT_RATE * new
        if self.after_cut:
            # Only then: in a long run of speech the run holds every committed word too, and
            # a 16 s window gave an echo of 20 words room (four words a second of it).
            room = max(room, REPEAT_RATE * (request.end - began))
        return words <= room + REPEAT_EDGE_WORDS

    def apply(self, request: DecodeRequest, hypothesis: Hypothesis) -> Update:
        """Take one decode's hypothesis: commit what is confirmed, trim the window."""
        if request.start != self.window_start:
            raise ValueError("hypothesis for a stale request (the window moved)")
        if request.kind == "preview":
            return self._apply_preview(request, hypothesis)
        if request.kind == "align":
            base, old_tail = len(self.committed), self.tail
            if self.locating:
                self._locate_given(request, hypothesis.spans)
            else:
                self._cut_between_words(request, hypothesis.spans)
            return self._update(base, old_tail)
        pieces = self.words_of(request, hypothesis)
        if (
            request.final
            and not self.retried
            and (self.guarded or self._heard_less(request, hypothesis))
        ):
            # The voice detector heard speech the decoder left out: it called the audio
            # silence, or it skipped a passage (a phrase said again reads, to a decoder that
            # has it in its context, like the context), or a guard cut its text short. A
            # final decode settles its audio for good: before that, decode it once more
            # without the text prompt.
            self.retried = True
            self.unprompted = True
            if self.prefix_loops >= PREFIX_LOOPS - 1:
                self._free_prefix()  # the last chance: a final decode settles its audio
            return Update(delta="", partial=None)
        old_tail = self.tail
        self.text_until = self._text_stop(request, hypothesis)
        if self.previewing:
            # A preview's guess is only on screen; decisions start from a clean tail.
            self.tail, self.previewing = [], False
        if not self.guarded or request.final:
            # A guarded decode's text stops at its cut: the audio after it still waits for a
            # decode (and the stream's end for a final one, rather than a settle).
            self.decoded_until = max(self.decoded_until, request.end)
            self.covered_until = max(self.covered_until, request.end)
        words = [w for p in pieces for w in p]
        boundaries = self._boundaries(request, hypothesis, pieces)
        if request.kind == "cut" and request.end not in self.gaps:
            # Commit up to the latest segment end; the rest is decoded again from there.
            agreed = boundaries[-1][1] if boundaries else len(words)
        elif request.final:
            agreed = len(words)
        else:
            span, wait = self.config.confirm_span, self.config.max_wait
            if hypothesis.avg_logprob < self.config.unsure_logprob:
                wait += max(0.0, self.config.unsure_span - span)
                span = max(span, self.config.unsure_span)
            agreed = self._agreement(words, request.end, span)
            if not agreed and self.audio_end - self.waiting_since >= wait - EPS:
                agreed = self._agreement_with_any(words)
            last_open = not hypothesis.pieces or hypothesis.pieces[-1].end is None
            if self.config.hold_last_word and agreed == len(words) and agreed and last_open:
                agreed -= 1
        base = len(self.committed)
        if agreed or not self.tail:
            self.waiting_since = request.end
        self._commit(words[:agreed])
        if request.final:
            self.tail, self.history = [], []
            self.unprompted = self.retried = False
        else:
            # Keep the hypotheses a later agreement may still need, without what was committed.
            # While words wait, every hypothesis since they began waiting is kept: a passage
            # the decoder reads two ways by turns agrees only with the one before last.
            horizon = min(
                request.end
                - max(self.config.confirm_span, self.config.unsure_span)
                - self.config.min_step,
                self.waiting_since - EPS,
            )
            older = [
                (end, h[agreed:])
                for end, h in self.history
                if end > horizon and _shared_prefix(h, words[:agreed]) == agreed
            ]
            self.tail = words[agreed:]
            self.tail_no_speech = hypothesis.no_speech_prob
            self.history = [*older[-8:], (request.end, self.tail)]
        self._remember_cuts(boundaries, base, agreed)
        stop = self._early_stop(request, hypothesis)
        if request.kind == "cut":
            if stop is not None:
                self._move_window(stop, len(self.committed))
            elif request.end in self.gaps:
                # It ended in a pause: move past it, unless voice the text did not reach
                # comes before the pause (then it is decoded again, not skipped).
                resume = self._unread_voice(request, hypothesis)
                self._move_window(resume or request.end, len(self.committed))
            elif boundaries:
                self._move_window(boundaries[-1][0], base + boundaries[-1][1])
            else:
                self._move_window(request.end, len(self.committed))
                self.forced_cuts += 1
            self.covered_until = self.window_start  # the words after the cut were dropped
        elif stop is not None and request.final and words and stop > self.final_stop + EPS:
            # The phrase's last decode ended its text at a segment end although speech goes
            # on long after it (a phrase said twice, heard once). Its words stay in the window
            # as the forced prefix, and the same audio is decoded once more for what follows
            # them: the segment end's time is too coarse to restart the window at.
            self.final_stop = stop
            self.covered_until = self.decoded_until = stop
        elif stop is not None and request.final:
            # It said nothing new before the stop (or stopped where the last one did): the
            # same window with the same prefix would read the same, and settling it would
            # drop the speech after the stop (a sentence at the end of a backlog, seconds of
            # it). Like Whisper's own seek, the window restarts at the stop, and the speech
            # after it gets a decode of its own, with the words before it as the prompt.
            self._move_window(max(stop, self.final_stop), len(self.committed))
            self.final_stop = -1.0
            self.covered_until = self.decoded_until = self.window_start
        elif stop is not None and not request.final:
            # The decoder ended its text at a segment end although speech goes on long
            # after it: like Whisper's own seek, decode again from there.
            self._move_window(stop, len(self.committed))
            self.covered_until = self.decoded_until = stop
        elif request.final:
            self.final_stop = -1.0
            self.settled_until = max(self.settled_until, request.end)
        else:
            whole = len(pieces) == len(hypothesis.pieces) and len(words) == sum(
                len(p.text.split()) for p in hypothesis.pieces
            )
            if not self.tail and whole and pieces and hypothesis.pieces[-1].end is not None:
                # All of it is committed and the speech ended inside the audio: settled. Not
                # when the guards dropped words: where such a text ends says nothing.
                end = min(hypothesis.pieces[-1].end, request.duration)
                self.settled_until = max(self.settled_until, request.start + end)
            self._trim(request, boundaries, base)
            if self.prefix_loops >= PREFIX_LOOPS and self.window_start == request.start:
                self._free_prefix()
        return self._update(base, old_tail)

    def _apply_preview(self, request: DecodeRequest, hypothesis: Hypothesis) -> Update:
        """Show a preview's words as the tail; nothing is committed, decided or trimmed."""
        if self.tail and not self.previewing:
            return Update(delta="", partial=None)  # a real hypothesis came first: keep it
        old_tail = self.tail
        self.tail = [w for p in self.words_of(request, hypothesis) for w in p]
        self.previewing = bool(self.tail)
        return self._update(len(self.committed), old_tail)

    def _locate_given(
        self, request: DecodeRequest, spans: tuple[tuple[float, float], ...] | None
    ) -> None:
        """The words a lost stream gave end where their last word ends in ``spans`` (or
        ``LONGEST_WORD`` after it starts): what was said before that is settled, and speech
        after it runs on from there (also for the repetition guard). Without word times the
        window is decoded whole, from its start."""
        self.locating = False
        groups = sum(1 for i, w in enumerate(self.committed) if i == 0 or not w.startswith(GLUE))
        if spans is None or len(spans) != groups or not spans:
            return
        start, end = spans[-1]
        # Speech after the words that no word accounts for is stretched over by the last one
        # ("out" aligned over 2.4 s, "and thick peppered" after it): it ends soon after it
        # starts, and what follows is this stream's to say.
        end = min(request.start + min(end, start + LONGEST_WORD), request.end)
        self.onset = self.heard_until = end
        self.settled_until = self.covered_until = self.decoded_until = end

    def _cut_between_words(
        self, request: DecodeRequest, spans: tuple[tuple[float, float], ...] | None
    ) -> None:
        """Restart the window between two committed words, at a pause if there is one.

        The cut lies at least a second into the window, within ``max_window`` of its start and
        ``keep_audio`` before the present; of such places, the latest pause the voice
        detector found, else the latest space between two words. Without word times
        (or any place that fits), everything is committed and the window restarts at the end
        of the decoded audio, as a forced cut.
        """
        inside = self.committed[len(self.committed) - self.window_words :]
        groups = [i for i, w in enumerate(inside) if i == 0 or not w.startswith(GLUE)]
        latest = min(
            self.window_start + self.config.max_window, self.audio_end - self.config.keep_audio
        )
        best: tuple[int, float] | None = None  # (at a pause, time)
        cut: tuple[float, int] | None = None
        if spans is not None and len(spans) == len(groups):
            for k in range(1, len(groups)):
                lo = request.start + spans[k - 1][1]
                hi = request.start + max(spans[k][0], spans[k - 1][1])
                if hi > latest or lo < self.window_start + 1.0:
                    continue
                pauses = [g for g in self.gaps if lo - 0.1 <= g <= hi + 0.1]
                at = pauses[-1] if pauses else (lo + hi) / 2
                score = (1 if pauses else 0, at)
                if best is None or score > best:
                    best, cut = score, (at, groups[k])
        if cut is None:
            self._force_cut(self.decoded_until)
            return
        at, words_before = cut
        self._move_window(at, len(self.committed) - self.window_words + words_before)

    def _early_stop(self, request: DecodeRequest, hypothesis: Hypothesis) -> float | None:
        """Where the text stopped, if it stopped at a segment end a second before more speech.

        Only with every word of the decode kept and committed (a text the guards or the
        no-speech judgement dropped would be lost with the audio it skipped), and only half a
        second or more into the window, so that restarting the window there always makes
        progress.
        """
        if self.tail or self.last_voice is None:
            return None
        end = self._text_stop(request, hypothesis)
        if end is None or end < request.start + 0.5:
            return None
        voice = min(self.last_voice, request.end)
        return end if voice >= end + 1.0 else None

    def _unread_voice(self, request: DecodeRequest, hypothesis: Hypothesis) -> float | None:
        """Where a cut decode's text ended, when speech the voice detector heard follows it.

        A backlog's window ends in a pause; its text may stop short of that pause (the last
        words of a passage, "Alright, thanks.", left out by one decode). Moving the window
        to the pause would drop that speech unheard, so the window restarts where the text
        ended instead. Only when every word of the decode was kept (a dropped text says
        nothing of where the speech is) and the window moves forward.
        """
        return self._speech_after(self._text_stop(request, hypothesis), request.end, UNREAD_VOICE)

    def _text_stop(self, request: DecodeRequest, hypothesis: Hypothesis) -> float | None:
        """Where ``hypothesis``'s text ended in the audio, if it closed its last segment (or
        the engine measured it) and every word was kept: a text the guards or the no-speech
        judgement dropped says nothing of where the speech is."""
        if self.guarded or says_no_speech(hypothesis) or not hypothesis.pieces:
            return None
        last = hypothesis.pieces[-1].end
        if last is None:
            last = hypothesis.text_end
        if last is None or last > request.duration:
            return None
        return request.start + last

    def _unread_at_pause(self) -> float | None:
        """Where the latest decode's text ended, when the voice detector heard at least
        ``UNREAD_PHRASE_VOICE`` of speech after it (and the window would move forward)."""
        if self.last_voice is None:
            return None
        return self._speech_after(self.text_until, self.last_voice, UNREAD_PHRASE_VOICE)

    def _speech_after(self, end: float | None, until: float, least: float) -> float | None:
        """``end``, if the voice detector heard ``least`` seconds of voice between it and
        ``until`` and the window would move forward by restarting there."""
        if end is None or end <= self.window_start + self.config.min_step or end >= until:
            return None
        voiced = self.voiced(end, until)
        return end if voiced is not None and voiced >= least else None

    def _update(self, base: int, old_tail: list[str]) -> Update:
        new_words = self.committed[base:]
        delta = join_words(new_words)
        if base and new_words and not new_words[0].startswith(GLUE):
            delta = " " + delta
        partial = join_words(self.tail) if self.tail != old_tail else None
        return Update(delta=delta, partial=partial)

    def _agreement(self, words: list[str], now: float, span: float) -> int:
        """Length of the prefix ``words`` shares with the earlier tails of the last ``span`` s.

        Every earlier tail at most ``span`` older than ``now`` must agree, and when none of
        them is a full step (``min_step``, at most ``span``) old, so must the latest tail
        before them. A shared engine steps a stream whenever it has a few tenths of a second
        of new audio; two hypotheses 0.3 s apart heard nearly the same audio and agree on the
        same wrong words (six streams on a fixed schedule of 0.4 s steps: WER 0.093 with the
        previous hypothesis alone, 0.066 reaching back half a second). When steps are
        further apart than ``span`` (a busy engine), the previous tail alone. Without any
        earlier tail there is no agreement yet.
        """
        if not self.history:
            return 0
        reach = min(span, self.config.min_step)
        earlier = [(end, tail) for end, tail in self.history if now - end <= span + EPS]
        if not earlier or now - earlier[0][0] < reach - EPS:
            before = [(end, tail) for end, tail in self.history if now - end > span + EPS]
            earlier = before[-1:] + earlier
        return min(_shared_prefix(words, tail) for _, tail in earlier)

    def _agreement_with_any(self, words: list[str]) -> int:
        """Length of the longest prefix ``words`` shares with any one earlier tail.

        Words that have waited ``max_wait`` are committed when two hypotheses agree on them,
        in a row or not: a decoder that reads a passage two ways by turns ("ill-disposed",
        "old-sposed", "ill-disposed") would otherwise hold every word after it until the
        phrase ends.
        """
        return max((_shared_prefix(words, tail) for _, tail in self.history), default=0)

    def _boundaries(
        self, request: DecodeRequest, hypothesis: Hypothesis, pieces: list[list[str]]
    ) -> list[tuple[float, int]]:
        """Segment ends with audio after them: (absolute time, continuation words before it).

        A segment closed right at the end of the audio is often closed only because the audio
        ends there, so it is not taken as a boundary.
        """
        out: list[tuple[float, int]] = []
        seen = 0
        latest = request.duration - self.config.boundary_margin
        for piece, words in zip(hypothesis.pieces, pieces, strict=False):
            seen += len(words)
            if piece.end is not None and 0.0 < piece.end <= latest:
                time = request.start + piece.end
                if not out or time > out[-1][0]:
                    out.append((time, seen))
        return out

    def _remember_cuts(self, boundaries: list[tuple[float, int]], base: int, agreed: int) -> None:
        """Merge this hypothesis' committed segment ends into the known cut points."""
        by_index = {idx: t for t, idx in self.cuts if t > self.window_start}
        for t, n in boundaries:
            if n <= agreed:
                by_index[base + n] = t
        cuts: list[tuple[float, int]] = []
        for idx in sorted(by_index):
            t = by_index[idx]
            if not cuts or t > cuts[-1][0]:
                cuts.append((t, idx))
        self.cuts = cuts

    def _said(self, n: int) -> list[str]:
        """The last ``n`` words said: the committed ones, after the context."""
        if len(self.committed) >= n:
            return self.committed[-n:]
        return self.context[len(self.committed) - n :] + self.committed

    def _commit(self, words: list[str]) -> None:
        self.committed.extend(words)
        if self.respoken:
            # The window's audio is read from its start: these words, too, are said again
            # by every later decode, not forced (until the window moves).
            self.respoken.extend(words)
        else:
            self.window_words += len(words)

    def _trim(self, request: DecodeRequest, boundaries: list[tuple[float, int]], base: int) -> None:
        """Keep the window short: cut at a committed segment end once it is long."""
        if self.window <= self.config.trim_at:
            return
        candidates = [c for c in self.cuts if c[0] > self.window_start]
        roomy = [c for c in candidates if c[0] <= self.audio_end - self.config.keep_audio]
        if roomy:
            self._move_window(*roomy[-1])
            return
        if self.window <= self.config.max_window:
            return
        if candidates:
            self._move_window(*candidates[-1])
            return
        agreed = len(self.committed) - base
        later = [b for b in boundaries if b[1] > agreed]
        if later:
            # Commit up to the latest segment end even though it was not agreed yet.
            time, n = later[-1]
            forced = self.tail[: n - agreed]
            self._commit(forced)
            self.tail = self.tail[len(forced) :]
            self.history = [(request.end, self.tail)]
            self._move_window(time, base + n)
            return
        if self.window_words or any(self.window_start + 1.0 < g for g in self.gaps):
            # The next request finds where the committed words lie ("align"), or decodes
            # up to a pause and commits that ("cut").
            return
        # No segment end, no pause: commit everything decoded and restart after it.
        self._force_cut(request.end)

    def _force_cut(self, at: float) -> None:
        """Commit the tail and restart the window at ``at`` (a word there may be split)."""
        self._commit(self.tail)
        self.tail, self.history = [], []
        self._move_window(at, len(self.committed))
        self.forced_cuts += 1


RESPOKEN_SKIP = 2
"""Words of ``respoken`` in a row that a re-reading may leave out (the made-up ones)."""


def _said_again(words: list[str], respoken: list[str]) -> int:
    """How many leading ``words`` say ``respoken`` again, in order, allowing the re-reading to
    leave out a few of its words: those the decoder made up ("A.") are not in the audio."""
    theirs = [normalize_word(w) for w in respoken]
    j = said = 0
    for i, word in enumerate(words):
        norm = normalize_word(word)
        ahead = theirs[j : j + RESPOKEN_SKIP + 1]
        if norm not in ahead:
            break
        j += ahead.index(norm) + 1
        said = i + 1
    return said


def _drop_leading(pieces: list[list[str]], n: int) -> list[list[str]]:
    """``pieces`` without their first ``n`` words (every piece kept, even if emptied)."""
    out = []
    for words in pieces:
        take = min(n, len(words))
        out.append(words[take:])
        n -= take
    return out


def _shared_prefix(words: list[str], other: list[str]) -> int:
    """How many leading words ``words`` and ``other`` share (case and punctuation aside)."""
    shared = 0
    for word, theirs in zip(words, other, strict=False):
        if normalize_word(word) != normalize_word(theirs):
            break
        shared += 1
    return shared
