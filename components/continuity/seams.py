"""Seams between legs, without I/O: which of a replaying leg's first words repeat the end of
the transcript (the audio it was sent again), found by aligning words, so that nothing is said
twice and nothing said once is dropped."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_WORD = re.compile(r"\S+")


def _norm(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum())


def words_of(text: str) -> list[tuple[str, int]]:
    """Normalised words of ``text`` with the offset just after each (punctuation alone skipped)."""
    out = []
    for m in _WORD.finditer(text):
        norm = _norm(m.group())
        if norm:
            out.append((norm, m.end()))
    return out


FREE_SKIP = 8
"""Tail words a replay may leave out at no cost: a delta's words are stamped with the audio
sent when it arrived, so the first of them can lie before the point the replay starts at."""
LEAD_GRAM = 3
"""Words in a row by which the new leg's first words are found in the tail (see
:func:`_lead_skip`)."""


def _lead_skip(tail: list[str], new: list[str]) -> int:
    """Tail words before the first place the new leg's first words appear in it.

    An engine that lags its audio sends words long after they were said, so the tail can
    begin far more than ``FREE_SKIP`` words before the audio the replay starts at (25 words
    for an engine 10 s behind): those words are free to leave out too, up to the first place
    where ``LEAD_GRAM`` words in a row, starting among the new leg's first ``LEAD_GRAM``,
    appear in the tail. Not further: a phrase the tail says twice must match its first copy.
    """
    grams = {tuple(new[j : j + LEAD_GRAM]) for j in range(min(LEAD_GRAM, len(new) - LEAD_GRAM + 1))}
    for i in range(len(tail) - LEAD_GRAM + 1):
        if tuple(tail[i : i + LEAD_GRAM]) in grams:
            return i
    return 0


def _seam_alignments(tail: list[str], new: list[str]) -> list[tuple[int, int, int]]:
    """For every length k of ``new``'s beginning: (edits, matches, matched words in a row at
    its end) of its best alignment with an end of ``tail``.

    One edit-distance table gives every k at once: row i aligns ``tail[:i]``, and the first
    column lets the alignment start later in ``tail``: free for the first ``FREE_SKIP``
    words, or up to where ``new``'s first words appear (:func:`_lead_skip`; their audio may
    lie before the replay), one edit each after that (the replay
    repeats the rest of the tail; a match far down the tail is a phrase the tail itself
    said twice).
    """
    n = len(tail)
    free = max(FREE_SKIP, _lead_skip(tail, new))
    # cell: (edits, -matches, matched words in a row ending here)
    prev: list[tuple[int, int, int]] = [(max(0, i - free), 0, 0) for i in range(n + 1)]
    out = []
    for j in range(1, len(new) + 1):
        cur: list[tuple[int, int, int]] = [(j, 0, 0)]
        for i in range(1, n + 1):
            same = tail[i - 1] == new[j - 1]
            diag = prev[i - 1]
            options = (
                (
                    diag[0] + (0 if same else 1),
                    diag[1] - (1 if same else 0),
                    diag[2] + 1 if same else 0,
                ),
                (cur[i - 1][0] + 1, cur[i - 1][1], 0),  # a tail word the new leg lacks
                (prev[i][0] + 1, prev[i][1], 0),  # a new word the tail lacks
            )
            cur.append(min(options, key=lambda c: (c[0], c[1], -c[2])))
        edits, negative, run = cur[n]
        out.append((edits, -negative, run))
        prev = cur
    return out


def _reach(tail: list[str], new: list[str]) -> tuple[int, int]:
    """Where in ``tail`` all of ``new`` best aligns with a stretch of it (free start, free
    end): (the tail index after the stretch, matched words)."""
    n = len(tail)
    prev: list[tuple[int, int]] = [(0, 0)] * (n + 1)  # (edits, -matches)
    for j in range(1, len(new) + 1):
        cur: list[tuple[int, int]] = [(j, 0)]
        for i in range(1, n + 1):
            same = tail[i - 1] == new[j - 1]
            diag = prev[i - 1]
            cur.append(
                min(
                    (diag[0] + (0 if same else 1), diag[1] - (1 if same else 0)),
                    (cur[i - 1][0] + 1, cur[i - 1][1]),
                    (prev[i][0] + 1, prev[i][1]),
                )
            )
        prev = cur
    best = min(range(n + 1), key=lambda i: (prev[i][0], prev[i][1], -i))
    return best, -prev[best][1]


def overlap_words(tail: list[str], new: list[str], *, complete: bool) -> int | None:
    """How many of ``new``'s first words repeat the end of ``tail`` (normalised words).

    ``tail`` is the transcript's end that the replayed audio may contain again; ``new`` what
    the replaying leg has said so far. None means: not decidable yet, wait for more words
    (unless ``complete``: the leg has no more to say, or it has been held long enough).

    The replayed audio starts inside the tail's audio, so what the new leg repeats is its
    *first* words, and they repeat the tail's *last* ones: the overlap is the beginning of
    ``new`` that best aligns with an end of ``tail``. Matching anywhere else would take a
    phrase the speaker really said again after the tail (an answer, a line repeated) for
    the repeat and drop it.
    """
    if not tail or not new:
        return 0 if complete or not tail else None
    enough = min(3, len(tail))
    best, best_score, decided = 0, 0, False
    for k, (edits, matches, run) in enumerate(_seam_alignments(tail, new), start=1):
        score = matches - edits
        if matches >= enough and score > 0 and score >= best_score:
            best, best_score, decided = k, score, run >= enough
    if decided:
        return best  # the tail's last words are matched in a row: the rest is new
    if not complete and len(new) < len(tail) + 4:
        return None
    return best


@dataclass(slots=True)
class Seam:
    """A replaying leg's start: its text is held until its repeat of the tail is found."""

    replay_from: int
    tail: list[str] = field(default_factory=list)
    held: str = ""
    held_since: float | None = None
    resolved: bool = False

    def take(self, *, complete: bool, expired: bool = False) -> str | None:
        """The held text minus the repeated words, once that is known (else None).

        ``expired``: the hold ran out while the leg goes on. If everything the new leg has
        said so far repeats a stretch of the tail that ends before the tail does (a slow
        engine has not caught up with the replayed audio yet), those words are dropped, the
        tail is shortened to what is still ahead, and the seam stays open: deciding now
        would let the rest of the tail through a second time.
        """
        new = [w for w, _ in words_of(self.held)]
        if expired and new:
            reach, matches = _reach(self.tail, new)
            if matches >= max(3, (3 * len(new) + 3) // 4) and reach < len(self.tail) - 1:
                self.tail = self.tail[reach:]
                self.dropped += len(new)
                self.held, self.held_since = "", None
                return None
        k = overlap_words(self.tail, new, complete=complete)
        if k is None:
            return None
        self.resolved = True
        words = words_of(self.held)
        cut = words[k - 1][1] if k else 0
        rest = self.held[cut:]
        self.dropped += k
        self.held = ""
        return rest

    dropped: int = 0
