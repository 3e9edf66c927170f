"""Transcript: deltas to text with audio-time spans, cue splitting, exact SRT / WebVTT / TXT."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from components.core.transcript import (
    MAX_CUE_CHARS,
    Cue,
    Transcript,
    Word,
    split_cues,
    to_srt,
    to_txt,
    to_vtt,
    write_exports,
)


def _two_sentences() -> Transcript:
    t = Transcript()
    t.add_delta(" Hello", 1.0)
    t.add_delta(" world.", 1.0)
    t.add_delta(" How are", 3.0)
    t.add_delta(" you?", 3.5)
    return t


def test_deltas_join_into_text() -> None:
    t = Transcript()
    for piece in [" The", " quick", " bro", "wn", " fox"]:
        t.add_delta(piece, 1.0)
    assert t.text == "The quick brown fox"
    assert [w.text for w in t.words()] == ["The", "quick", "brown", "fox"]


def test_empty_delta_is_ignored() -> None:
    t = Transcript()
    t.add_delta("", 5.0)
    assert t.text == "" and t.words() == [] and t.cues() == []


def test_word_takes_the_mark_of_the_delta_that_completed_it() -> None:
    t = Transcript()
    t.add_delta(" hel", 1.0)
    t.add_delta("lo there", 4.0)
    words = t.words()
    assert [w.text for w in words] == ["hello", "there"]
    # Both words were completed by the second delta, so both end by its mark.
    assert words[-1].end == pytest.approx(4.0)
    assert words[0].start == pytest.approx(4.0 - 2 * 0.4)


def test_word_spans_are_ordered_and_bounded_by_marks() -> None:
    words = _two_sentences().words()
    assert [(w.text, round(w.start, 3), round(w.end, 3)) for w in words] == [
        ("Hello", 0.2, 0.6),
        ("world.", 0.6, 1.0),
        ("How", 2.2, 2.6),
        ("are", 2.6, 3.0),
        ("you?", 3.1, 3.5),
    ]


def test_marks_never_go_back_in_time() -> None:
    t = Transcript()
    t.add_delta(" one", 5.0)
    t.add_delta(" two", 2.0)  # a late, smaller mark cannot move a word before its predecessor
    a, b = t.words()
    assert b.start >= a.end and b.end >= 5.0


def test_words_arriving_together_get_nonzero_spans() -> None:
    t = Transcript()
    t.add_delta(" a", 1.0)
    t.add_delta(" b c d", 1.0)
    t.add_delta(" e", 1.0)  # same mark again: no room before it, spans still positive
    words = t.words()
    assert all(w.end > w.start for w in words)
    assert all(b.start >= a.end - 1e-9 for a, b in itertools.pairwise(words))


def test_partial_is_kept_apart_from_confirmed_text() -> None:
    t = Transcript()
    t.add_delta(" Confirmed", 1.0)
    t.set_partial(" maybe this")
    assert t.text == "Confirmed" and t.partial == " maybe this"
    t.set_partial(" maybe that")
    assert t.partial == " maybe that"


def test_finish_adds_only_what_deltas_lacked_and_clears_partial() -> None:
    t = Transcript()
    t.add_delta(" Good", 1.0)
    t.set_partial(" morn")
    t.finish("Good morning everyone", 2.0)
    assert t.text == "Good morning everyone" and t.partial == ""
    assert t.words()[-1].end == pytest.approx(2.0)


def test_finish_continues_a_split_word() -> None:
    t = Transcript()
    t.add_delta(" Good mor", 1.0)
    t.finish("Good morning", 2.0)
    assert t.text == "Good morning"


def test_finish_disagreeing_with_deltas_keeps_deltas() -> None:
    t = Transcript()
    t.add_delta(" Hello there", 1.0)
    t.finish("Something else", 2.0)
    assert t.text == "Hello there"


def test_clear() -> None:
    t = _two_sentences()
    t.set_partial(" x")
    t.clear()
    assert t.text == "" and t.partial == "" and t.words() == []


def test_cues_split_at_sentence_ends() -> None:
    cues = _two_sentences().cues()
    assert [(c.text, round(c.start, 3), round(c.end, 3)) for c in cues] == [
        ("Hello world.", 0.2, 1.0),
        ("How are you?", 2.2, 3.5),
    ]


def test_a_title_is_not_a_sentence_end() -> None:
    t = Transcript()
    t.add_delta(" Mr.", 1.4)
    t.add_delta(" Quilter is the apostle.", 3.0)
    t.add_delta(" Dr. Who?", 4.5)
    assert [c.text for c in t.cues()] == ["Mr. Quilter is the apostle.", "Dr. Who?"]


def test_cues_split_at_max_length() -> None:
    words = [Word(f"word{i:02d}", i * 0.3, i * 0.3 + 0.3) for i in range(40)]
    cues = split_cues(words)
    assert len(cues) > 1
    assert all(len(c.text) <= MAX_CUE_CHARS for c in cues)
    assert " ".join(c.text for c in cues) == " ".join(w.text for w in words)


def test_cues_split_at_max_duration_and_pauses() -> None:
    slow = [Word(f"w{i}", i * 1.0, i * 1.0 + 0.5) for i in range(10)]
    assert all(c.end - c.start <= 7.0 for c in split_cues(slow))
    paused = [Word("before", 0.0, 0.5), Word("after", 5.0, 5.5)]
    assert [c.text for c in split_cues(paused)] == ["before", "after"]


def test_short_cue_is_held_but_not_into_the_next() -> None:
    words = [Word("Hi.", 1.0, 1.2), Word("Next.", 1.5, 2.0), Word("Last.", 9.0, 9.1)]
    cues = split_cues(words)
    assert cues[0] == Cue(1.0, 1.5, "Hi.")  # held only up to the next cue's start
    assert cues[1].end == pytest.approx(2.3)  # held to 0.8 s
    assert cues[2].end == pytest.approx(9.8)


SRT_EXPECTED = """1
00:00:00,200 --> 00:00:01,000
Hello world.

2
00:00:02,200 --> 00:00:03,500
How are you?
"""

VTT_EXPECTED = """WEBVTT

00:00:00.200 --> 00:00:01.000
Hello world.

00:00:02.200 --> 00:00:03.500
How are you?
"""


def test_srt_exact() -> None:
    assert to_srt(_two_sentences().cues()) == SRT_EXPECTED


def test_vtt_exact() -> None:
    assert to_vtt(_two_sentences().cues()) == VTT_EXPECTED


def test_txt_exact() -> None:
    assert to_txt(_two_sentences().text) == "Hello world. How are you?\n"
    assert to_txt("") == ""


def test_hours_and_long_lines_and_escaping() -> None:
    cue = Cue(3723.4567, 3725.0, "a <b> & c " + "x" * 20 + " and some more words here")
    srt = to_srt([cue])
    vtt = to_vtt([cue])
    assert "01:02:03,457 --> 01:02:05,000" in srt
    assert "01:02:03.457 --> 01:02:05.000" in vtt
    assert "&lt;b&gt; &amp; c" in vtt and "<b> & c" in srt
    text_lines = srt.strip().split("\n")[2:]
    assert len(text_lines) == 2 and all(len(line) <= 42 for line in text_lines)


_SRT_BLOCK = re.compile(
    r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n((?:.+\n){1,2})"
)
_VTT_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})$")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def _validate_srt(srt: str) -> list[tuple[float, float, str]]:
    """Check SubRip structure strictly; return (start, end, text) of each cue."""
    blocks = srt.split("\n\n")
    out = []
    for n, block in enumerate(blocks, 1):
        m = _SRT_BLOCK.fullmatch(block if block.endswith("\n") else block + "\n")
        assert m, f"bad SRT block {block!r}"
        assert int(m.group(1)) == n
        start, end = _seconds(*m.group(2, 3, 4, 5)), _seconds(*m.group(6, 7, 8, 9))
        assert start < end
        out.append((start, end, m.group(10).strip().replace("\n", " ")))
    for a, b in itertools.pairwise(out):
        assert b[0] >= a[1], "cues overlap"
    return out


def _validate_vtt(vtt: str) -> list[tuple[float, float, str]]:
    assert vtt.startswith("WEBVTT\n\n")
    out = []
    for block in vtt[len("WEBVTT\n\n") :].split("\n\n"):
        lines = block.strip("\n").split("\n")
        m = _VTT_STAMP.match(lines[0])
        assert m, f"bad VTT timing line {lines[0]!r}"
        assert "-->" not in " ".join(lines[1:])
        start, end = _seconds(*m.group(1, 2, 3, 4)), _seconds(*m.group(5, 6, 7, 8))
        assert start < end
        out.append((start, end, " ".join(lines[1:])))
    return out


def test_long_transcript_exports_are_valid_and_agree() -> None:
    t = Transcript()
    sentence = " the quick brown fox jumps over the lazy dog and keeps running far away"
    for i in range(30):
        t.add_delta(sentence if i % 5 else sentence + ".", 1.0 + i * 1.3)
    srt_cues = _validate_srt(to_srt(t.cues()))
    vtt_cues = _validate_vtt(to_vtt(t.cues()))
    assert [round(a, 3) for a, _, _ in srt_cues] == [round(a, 3) for a, _, _ in vtt_cues]
    assert " ".join(text for _, _, text in srt_cues) == t.text
    assert " ".join(text for _, _, text in vtt_cues) == t.text


def test_write_exports(tmp_path: Path) -> None:
    paths = write_exports(_two_sentences(), tmp_path / "out", "captions")
    assert sorted(paths) == ["srt", "txt", "vtt"]
    assert paths["srt"].read_text(encoding="utf-8") == SRT_EXPECTED
    assert paths["vtt"].read_text(encoding="utf-8") == VTT_EXPECTED
    assert paths["txt"].read_text(encoding="utf-8") == "Hello world. How are you?\n"
