"""The speech evaluation set and word error rate, shared by tests and benchmarks.

The set lives outside the repository (``../shared/eval`` beside the checkout, or ``EVAL_DIR``);
``manifest.jsonl`` lists real recordings with reference transcripts. References differ in case,
punctuation and "Mr"/"mister", so both sides are normalised before scoring.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Clip:
    id: str
    path: Path
    text: str
    seconds: float
    condition: str


def eval_dir() -> Path:
    """Where the evaluation set is: ``EVAL_DIR`` if set, else ``../shared/eval``."""
    return Path(os.environ.get("EVAL_DIR") or REPO_ROOT.parent / "shared" / "eval")


def load_clips(directory: Path | None = None) -> list[Clip]:
    """All clips of the manifest, in its order; an empty list when the set is absent."""
    root = directory or eval_dir()
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        return []
    clips = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        clips.append(
            Clip(
                id=row["id"],
                path=root / row["audio"],
                text=row["text"],
                seconds=float(row["seconds"]),
                condition=row.get("condition", ""),
            )
        )
    return clips


def clip(clip_id: str, directory: Path | None = None) -> Clip:
    for c in load_clips(directory):
        if c.id == clip_id:
            return c
    raise KeyError(f"clip {clip_id!r} not in {directory or eval_dir()}")


_PUNCT = re.compile(r"[^\w\s']|_")


def normalize(text: str) -> list[str]:
    """Lower-case, strip punctuation, map "mr" to "mister"; return the words."""
    words = _PUNCT.sub(" ", text.lower().replace("-", " ")).split()
    out = []
    for w in words:
        w = w.strip("'")
        if not w:
            continue
        out.append("mister" if w == "mr" else w)
    return out


def _joined(words: list[str], other: list[str]) -> list[str]:
    """``words`` with each pair written as one word in ``other`` joined into that word."""
    spelled = set(other)
    out: list[str] = []
    i = 0
    while i < len(words):
        if i + 1 < len(words) and words[i] + words[i + 1] in spelled:
            out.append(words[i] + words[i + 1])
            i += 2
        else:
            out.append(words[i])
            i += 1
    return out


def same_compounds(ref: list[str], hyp: list[str]) -> tuple[list[str], list[str]]:
    """``ref`` and ``hyp`` with a compound written as one word on one side and as two on the
    other ("coldhearted", "cold hearted", "cold-hearted") spelled alike.

    The references, the model and dictionaries disagree on such spellings; counting one as a
    substitution and a deletion would report a word lost where every word was shown.
    """
    return _joined(ref, hyp), _joined(hyp, ref)


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, insertions, deletions), by ``jiwer``,
    with compounds spelled alike (:func:`same_compounds`)."""
    if not ref or not hyp:
        return len(ref) + len(hyp)
    import jiwer  # lazy: benches and tests only

    ref, hyp = same_compounds(ref, hyp)

    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return int(out.substitutions + out.deletions + out.insertions)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of one hypothesis against one reference, after normalisation."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)


def corpus_wer(pairs: list[tuple[str, str]]) -> float:
    """Total edits over total reference words for (reference, hypothesis) pairs."""
    edits = words = 0
    for ref, hyp in pairs:
        r, h = normalize(ref), normalize(hyp)
        edits += edit_distance(r, h)
        words += len(r)
    return edits / words if words else 0.0


# --------------------------------------------------------------------------- conversations

CONVERSATIONS = REPO_ROOT / "tests" / "data" / "conversation.jsonl"
"""Splice recipes of the conversation set: how each case is cut from the evaluation clips."""


@dataclass(frozen=True, slots=True)
class Conversation:
    """A case of the conversation set: evaluation audio spliced the way people talk.

    Real events repeat themselves (answers, emphasis, a line said again); read speech does not.
    ``clear`` cases are short and unambiguous enough for tests to demand every word.
    """

    id: str
    text: str
    note: str
    clear: bool
    audio: Any
    """float32 mono samples at 16 kHz."""
    phrase: str = ""
    """A phrase the case says several times (normalised words) ..."""
    times: int = 0
    """... this many times: a transcript that says it fewer times lost a repeat."""

    def repeats_in(self, text: str) -> int:
        """How often ``text`` says the case's repeated phrase."""
        words, phrase = normalize(text), self.phrase.split()
        n = len(phrase)
        return sum(words[i : i + n] == phrase for i in range(len(words) - n + 1)) if n else 0

    @property
    def seconds(self) -> float:
        return len(self.audio) / 16_000


def _splice(parts: list[Any], clips: dict[str, Clip]) -> tuple[Any, list[str]]:
    """Samples of a recipe (``[clip id, from s, to s]`` pieces and silences in seconds), and
    the clip ids it used."""
    import numpy as np
    import soundfile

    rate = 16_000
    out: list[Any] = []
    used: list[str] = []
    for part in parts:
        if isinstance(part, int | float):
            out.append(np.zeros(round(part * rate), np.float32))
            continue
        source = clips[part[0]]
        samples, sr = soundfile.read(source.path, dtype="float32")
        if sr != rate or samples.ndim != 1:
            raise ValueError(f"{source.path}: expected 16 kHz mono")
        lo = round(part[1] * rate) if len(part) > 1 else 0
        hi = round(part[2] * rate) if len(part) > 2 else len(samples)
        out.append(samples[lo:hi])
        used.append(part[0])
    return np.concatenate(out), used


def _eval_with_repeats(clips: list[Clip]) -> tuple[list[Any], str]:
    """Every clip a second apart, every other one said again after it."""
    parts: list[Any] = []
    texts: list[str] = []
    for i, c in enumerate(clips):
        for _ in range(2 if i % 2 else 1):
            if parts:
                parts.append(1.0)
            parts.append([c.id])
            texts.append(c.text)
    return parts, " ".join(texts)


def load_conversations(
    directory: Path | None = None, manifest: Path = CONVERSATIONS
) -> list[Conversation]:
    """The conversation set, spliced in memory from the evaluation clips (empty without them)."""
    found = load_clips(directory)
    if not found:
        return []
    clips = {c.id: c for c in found}
    cases = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        parts, text = row["parts"], row.get("text", "")
        if parts == "eval-with-repeats":
            parts, text = _eval_with_repeats(found)
        audio, _ = _splice(parts, clips)
        repeats = row.get("repeats") or {}
        cases.append(
            Conversation(
                id=row["id"],
                text=text,
                note=row["note"],
                clear=bool(row["clear"]),
                audio=audio,
                phrase=repeats.get("phrase", ""),
                times=int(repeats.get("times", 0)),
            )
        )
    return cases


@dataclass(frozen=True, slots=True)
class Errors:
    """Word errors of a hypothesis against a reference (after normalisation)."""

    words: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def edits(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def __add__(self, other: Errors) -> Errors:
        return Errors(
            self.words + other.words,
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
        )


def errors(reference: str, hypothesis: str) -> Errors:
    """Substitutions, deletions and insertions of a minimum-edit alignment (``jiwer``).

    Deletions are what a captioning stream must never add: words said and never shown.
    Compounds are spelled alike first (:func:`same_compounds`); the word count is the
    reference's own.
    """
    import jiwer  # lazy: benches and tests only

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return Errors(0, 0, 0, len(hyp))
    if not hyp:
        return Errors(len(ref), 0, len(ref), 0)
    words = len(ref)
    ref, hyp = same_compounds(ref, hyp)
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return Errors(words, out.substitutions, out.deletions, out.insertions)
