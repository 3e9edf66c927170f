"""Guards against a small model's loops and echoes, judged from the text alone.

What these find is a *suspect*: a word or phrase said over and over, text that repeats what
was committed, a decode that says it heard no speech. The streaming policy decides with the
audio whether a suspect is speech (people repeat themselves) or the decoder's doing.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable

_NORM = re.compile(r"[^\w']+")


def normalize_word(word: str) -> str:
    """Case- and punctuation-blind form of a word, for agreement between hypotheses."""
    return _NORM.sub("", word.lower()) or word


def cut_runs(
    words: list[str],
    times: Callable[[int], int],
    max_ngram: int = 8,
    *,
    after: int = 0,
    min_ngram: int = 1,
) -> list[str]:
    """Cut ``words`` where a phrase of n words is said ``times(n)`` times in a row, keeping
    its first occurrence. The first ``after`` words are context (text already committed):
    only a run that goes on past them counts, and they are never cut."""
    norm = [normalize_word(w) for w in words]
    for i in range(len(norm)):
        for n in range(min_ngram, max_ngram + 1):
            need = times(n)
            if i + n * need > len(norm) or i + n * need <= after:
                continue
            gram = norm[i : i + n]
            if all(norm[i + k * n : i + (k + 1) * n] == gram for k in range(1, need)):
                return words[: max(i + n, after)]
    return words


def cut_repetition(
    words: list[str],
    max_repeats: int = 3,
    max_ngram: int = 8,
    *,
    after: int = 0,
    min_ngram: int = 1,
) -> list[str]:
    """Cut ``words`` where a phrase starts repeating ``max_repeats`` times in a row.

    Single words need two repeats more ("words words words words" is speech; five times in a
    row from a decoder is a loop); phrases of three words or more only one in all ("go
    forward ten meters go forward ten meters": a suspect, which the policy then judges by
    the audio). The first occurrence of the phrase is kept; see :func:`cut_runs`.
    """

    def times(n: int) -> int:
        return max_repeats + 2 if n == 1 else max_repeats if n == 2 else 2

    return cut_runs(words, times, max_ngram, after=after, min_ngram=min_ngram)


def is_loop(word: str) -> bool:
    """A "word" that is one phrase over and over without spaces ("the...the...the...")."""
    if len(word) < 24:
        return False
    data = word.encode("utf-8")
    return len(data) / len(zlib.compress(data)) > 2.0


def cut_echo(words: list[str], context: list[str], n: int = 5) -> list[str]:
    """Cut ``words`` where ``n`` of them in a row repeat ``n`` words in a row of ``context``."""
    if len(words) < n or len(context) < n:
        return words
    seen = {
        tuple(normalize_word(w) for w in context[i : i + n]) for i in range(len(context) - n + 1)
    }
    norm = [normalize_word(w) for w in words]
    for i in range(len(norm) - n + 1):
        if tuple(norm[i : i + n]) in seen:
            return words[:i]
    return words
