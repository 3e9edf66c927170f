"""A live transcript: append-only deltas with audio-time marks, and SRT / WebVTT / TXT export.

Engines send text, not timings: a ``transcription.delta`` says only which words are now
confirmed. What the client does know is how much audio it had sent when each delta arrived,
so every delta is stamped with that *audio time* (not wall time: a file streamed as if live and
a microphone give the same marks). A word cannot end after the audio that contained it had been
sent, so the mark is an upper bound on the word's end; the words of one delta are spread back
from it at a plausible speaking rate, never before the previous word ends. Subtitles built from
these spans land within the engine's lag of the speech, which is what live captions can offer.

Deltas may split a word (token-level engines such as vLLM send ``"hel"`` then ``"lo"``), so
words are found in the joined text and each takes the mark of the delta that completed it.

Pure data and functions: no I/O except :func:`write_exports`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

WORD_SECONDS = 0.4
"""Typical length of a spoken word (about 150 words a minute): how far back words are spread."""

MIN_WORD_SECONDS = 0.1
"""Shortest span given to a word, so that cues never have zero length."""

MAX_CUE_CHARS = 84
"""Longest cue text: two subtitle lines of 42 characters."""

LINE_CHARS = 42
"""A cue longer than this is shown on two lines, broken at the space nearest the middle."""

MAX_CUE_SECONDS = 7.0
"""Longest cue on screen before a new one starts."""

MAX_GAP_SECONDS = 1.5
"""A pause longer than this between two words starts a new cue."""

MIN_CUE_SECONDS = 0.8
"""Cues shorter than this are held on screen longer, up to the start of the next cue."""

_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*$")
_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "prof.", "mt."})
"""Titles whose full stop does not end a sentence ("Mr. Quilter" is one cue, not two)."""


def ends_sentence(word: str) -> bool:
    return bool(_SENTENCE_END.search(word)) and word.lower() not in _ABBREVIATIONS


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Cue:
    start: float
    end: float
    text: str


class Transcript:
    """Confirmed text with audio-time marks, plus the tentative tail an engine may revise.

    Not thread-safe: one owner (a caption session) feeds it and hands out copies of its text.
    """

    def __init__(self) -> None:
        self._pieces: list[tuple[str, float]] = []
        self._joined = ""
        self.partial = ""

    def add_delta(self, text: str, audio_time: float) -> None:
        """Append confirmed text that arrived when ``audio_time`` seconds of audio had been sent."""
        if not text:
            return
        if self._pieces:
            audio_time = max(audio_time, self._pieces[-1][1])
        self._pieces.append((text, max(0.0, audio_time)))
        self._joined += text

    def set_partial(self, text: str) -> None:
        """Replace the tentative tail (``transcription.partial`` carries all of it each time)."""
        self.partial = text

    def finish(self, full_text: str, audio_time: float) -> None:
        """Reconcile with ``transcription.done``: keep the deltas, add any text they lacked.

        Deltas are the contract (append-only); when the final text extends them, the rest is
        appended as one last delta. A final text that disagrees with the deltas is ignored.
        """
        self.partial = ""
        have = " ".join(self._joined.split())
        final = " ".join(full_text.split())
        if final.startswith(have) and len(final) > len(have):
            rest = final[len(have) :]
            if self._joined[-1:].isspace():
                rest = rest.lstrip()
            self.add_delta(rest, audio_time)

    def clear(self) -> None:
        self._pieces.clear()
        self._joined = ""
        self.partial = ""

    @property
    def text(self) -> str:
        """The confirmed transcript, with runs of whitespace made single spaces."""
        return " ".join(self._joined.split())

    @property
    def last_mark(self) -> float:
        return self._pieces[-1][1] if self._pieces else 0.0

    def words(self) -> list[Word]:
        """Confirmed words with estimated audio-time spans, in order, never overlapping."""
        if not self._pieces:
            return []
        # Mark of the piece containing each character offset's end.
        ends: list[int] = []
        pos = 0
        for piece, _ in self._pieces:
            pos += len(piece)
            ends.append(pos)
        found = [(m.group(), m.end()) for m in _WORD.finditer(self._joined)]
        marks: list[float] = []
        idx = 0
        for _, end in found:
            while ends[idx] < end:
                idx += 1
            marks.append(self._pieces[idx][1])
        words: list[Word] = []
        prev_end = 0.0
        i = 0
        while i < len(found):
            j = i
            while j < len(found) and marks[j] == marks[i]:
                j += 1
            count = j - i
            mark = marks[i]
            start = max(prev_end, mark - count * WORD_SECONDS)
            end = max(mark, start + count * MIN_WORD_SECONDS)
            step = (end - start) / count
            for k in range(count):
                words.append(Word(found[i + k][0], start + k * step, start + (k + 1) * step))
            prev_end = end
            i = j
        return words

    def cues(
        self,
        *,
        max_chars: int = MAX_CUE_CHARS,
        max_seconds: float = MAX_CUE_SECONDS,
        max_gap: float = MAX_GAP_SECONDS,
    ) -> list[Cue]:
        return split_cues(
            self.words(), max_chars=max_chars, max_seconds=max_seconds, max_gap=max_gap
        )


def split_cues(
    words: list[Word],
    *,
    max_chars: int = MAX_CUE_CHARS,
    max_seconds: float = MAX_CUE_SECONDS,
    max_gap: float = MAX_GAP_SECONDS,
) -> list[Cue]:
    """Group words into subtitle cues.

    A cue ends after a word that ends a sentence, before a word that would make it longer than
    ``max_chars`` or ``max_seconds``, and before a pause longer than ``max_gap``. Short cues are
    held until ``MIN_CUE_SECONDS`` when the next cue leaves room.
    """
    groups: list[list[Word]] = []
    current: list[Word] = []
    for word in words:
        if current:
            length = sum(len(w.text) for w in current) + len(current) + len(word.text)
            too_long = length > max_chars or word.end - current[0].start > max_seconds
            if too_long or word.start - current[-1].end > max_gap:
                groups.append(current)
                current = []
        current.append(word)
        if ends_sentence(word.text):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    cues = []
    for n, group in enumerate(groups):
        start, end = group[0].start, group[-1].end
        limit = groups[n + 1][0].start if n + 1 < len(groups) else None
        held = start + MIN_CUE_SECONDS
        if end < held:
            end = held if limit is None else max(end, min(held, limit))
        cues.append(Cue(start, end, " ".join(w.text for w in group)))
    return cues


def _timestamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _lines(text: str) -> str:
    """One line, or two broken at the space nearest the middle when longer than LINE_CHARS."""
    if len(text) <= LINE_CHARS or " " not in text:
        return text
    middle = len(text) // 2
    spaces = [i for i, c in enumerate(text) if c == " "]
    cut = min(spaces, key=lambda i: abs(i - middle))
    return text[:cut] + "\n" + text[cut + 1 :]


def to_srt(cues: list[Cue]) -> str:
    """SubRip: numbered blocks, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line after each."""
    blocks = []
    for n, cue in enumerate(cues, 1):
        stamp = f"{_timestamp(cue.start, ',')} --> {_timestamp(cue.end, ',')}"
        blocks.append(f"{n}\n{stamp}\n{_lines(cue.text)}\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(cues: list[Cue]) -> str:
    """WebVTT: the ``WEBVTT`` header, then ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` cues."""
    blocks = ["WEBVTT\n"]
    for cue in cues:
        stamp = f"{_timestamp(cue.start, '.')} --> {_timestamp(cue.end, '.')}"
        blocks.append(f"{stamp}\n{_vtt_escape(_lines(cue.text))}\n")
    return "\n".join(blocks)


def to_txt(text: str) -> str:
    """Plain text: the transcript and a final newline (empty file for an empty transcript)."""
    text = " ".join(text.split())
    return text + "\n" if text else ""


EXPORT_FORMATS = ("txt", "srt", "vtt")


def write_exports(transcript: Transcript, directory: Path, stem: str) -> dict[str, Path]:
    """Write ``stem.txt``, ``stem.srt`` and ``stem.vtt`` into ``directory``; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cues = transcript.cues()
    bodies = {"txt": to_txt(transcript.text), "srt": to_srt(cues), "vtt": to_vtt(cues)}
    paths = {}
    for ext in EXPORT_FORMATS:
        path = directory / f"{stem}.{ext}"
        path.write_text(bodies[ext], encoding="utf-8")
        paths[ext] = path
    return paths
