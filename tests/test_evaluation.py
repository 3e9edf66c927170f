"""Scoring transcripts: what counts as a word said and never shown."""

from __future__ import annotations

from components.core.evaluation import Errors, errors, wer


def test_a_compound_in_one_word_or_two_is_the_same_words() -> None:
    reference = "unless to be rather cold-hearted and rather selfish"
    assert errors(reference, "Unless to be rather coldhearted, and rather selfish.") == Errors(
        9, 0, 0, 0
    )
    assert errors("a coldhearted man", "a cold hearted man") == Errors(3, 0, 0, 0)


def test_a_word_left_out_is_a_deletion_and_a_wrong_one_a_substitution() -> None:
    assert errors("he could wait no longer", "he could wait longer") == Errors(5, 0, 1, 0)
    assert errors("he could wait no longer", "he could wait no lunger") == Errors(5, 1, 0, 0)
    assert errors("cold hearted", "cold") == Errors(2, 0, 1, 0)


def test_word_error_rate_is_normalised() -> None:
    assert wer("Mr. Quilter is the apostle", "mister quilter is the apostle") == 0.0
    assert wer("one two three four", "one two three") == 0.25
