"""The streaming policy alone: made-up hypotheses, no model, no audio, no event loop."""

from __future__ import annotations

import random

import pytest

from components.engines.whisper.guards import cut_echo, cut_repetition, normalize_word
from components.engines.whisper.policy import (
    LONGEST_WORD,
    DecodeRequest,
    Hypothesis,
    Piece,
    PolicyConfig,
    StreamingPolicy,
    Update,
)


def make(
    *, previews: bool = False, terms: frozenset[str] = frozenset(), **overrides: object
) -> StreamingPolicy:
    """A policy with LocalAgreement-2 at half-second steps (no previews) unless told otherwise."""
    settings: dict[str, object] = {"confirm_span": 0.5, **overrides}
    config = PolicyConfig(**settings)  # type: ignore[arg-type]
    return StreamingPolicy(config, previews=previews, terms=terms)


def talk(policy: StreamingPolicy, seconds: float, *, voice: bool = True) -> None:
    """Push audio in 0.1 s chunks; with ``voice`` the detector hears speech up to the end."""
    for _ in range(round(seconds * 10)):
        end = policy.audio_end + 0.1
        policy.push(0.1, end if voice else policy.last_voice)


def next_request(policy: StreamingPolicy) -> DecodeRequest:
    """The policy's next decode request, which the test expects it to have."""
    request = policy.request()
    assert request is not None, "a decode was expected"
    return request


def decode(policy: StreamingPolicy, *texts: str, ends: tuple[float | None, ...] = ()) -> Update:
    """Run the policy's next request with a hypothesis made of ``texts`` (one per piece)."""
    return policy.apply(next_request(policy), Hypothesis.of(*texts, ends=ends))


def agreed(
    policy: StreamingPolicy,
    seconds: float,
    text: str,
    ends: tuple[float | None, float | None] = (None, None),
) -> Update:
    """``seconds`` of speech decoded as ``text``, and half a second more decoded the same (the
    text ending at ``ends``): two agreeing hypotheses, which commit their words. The last update."""
    talk(policy, seconds)
    decode(policy, text, ends=ends[:1])
    talk(policy, 0.5)
    return decode(policy, text, ends=ends[1:])


# --------------------------------------------------------------------------- helpers


def test_config_rejects_inconsistent_values() -> None:
    with pytest.raises(ValueError):
        PolicyConfig(min_step=0)
    with pytest.raises(ValueError):
        PolicyConfig(keep_audio=PolicyConfig().trim_at)  # not below trim_at
    with pytest.raises(ValueError):
        PolicyConfig(max_window=30.0)
    with pytest.raises(ValueError):
        PolicyConfig(confirm_span=0)
    with pytest.raises(ValueError):
        PolicyConfig(commit_silence=0)


def test_normalize_word_ignores_case_and_punctuation() -> None:
    assert normalize_word("Hello,") == "hello"
    assert normalize_word("don't.") == "don't"
    assert normalize_word("...") == "..."  # nothing left: the word itself


def test_cut_repetition_cuts_loops_keeps_speech() -> None:
    assert cut_repetition("no no no".split()) == "no no no".split()
    assert cut_repetition("words words words words".split()) == ["words"] * 4
    assert cut_repetition("the the the the the the".split()) == ["the"]
    loop = "ask not . ask not . ask not . ask not .".split()
    assert cut_repetition(loop) == "ask not .".split()
    text = "he said it was you and you said it was him".split()
    assert cut_repetition(text) == text
    assert cut_repetition("I said. Go on. Go on. Go on. Go on.".split()) == "I said. Go on.".split()
    twice = "go forward ten meters go forward ten meters".split()
    assert cut_repetition(twice) == "go forward ten meters".split()
    assert cut_repetition("I was I was going".split()) == "I was I was going".split()


def test_a_loop_that_began_in_committed_text_is_cut_there() -> None:
    committed = "so I'm going to say".split()
    new = "I'm going to say I'm going to say".split()
    assert cut_repetition(committed + new, after=len(committed)) == committed
    # A loop wholly inside the context does not hold up what follows it.
    looped = "go on go on go on".split()
    assert cut_repetition([*looped, "and", "then"], after=len(looped)) == [*looped, "and", "then"]


def test_cut_echo_stops_where_recent_text_repeats() -> None:
    context = "we are just saying some words here".split()
    words = "and you know we are just saying some words".split()
    assert cut_echo(words, context, 5) == ["and", "you", "know"]
    fresh = "and then something new".split()
    assert cut_echo(fresh, context, 5) == fresh
    assert cut_echo(words, [], 5) == words


# --------------------------------------------------------------------------- silence


def test_silence_is_never_decoded_and_the_window_stays_short() -> None:
    policy = make()
    for _ in range(60):
        talk(policy, 0.5, voice=False)
        assert not policy.due()
        assert policy.request() is None
        assert policy.window <= policy.config.trim_at + 0.5
    policy.finish()
    assert policy.settle() is None
    assert policy.request() is None
    assert policy.done and policy.transcript == ""


def test_silence_before_the_first_words_is_not_kept_in_the_window() -> None:
    policy = make()
    talk(policy, 6.0, voice=False)
    assert policy.request() is None
    assert policy.window <= policy.config.speech_pad + 0.1 + 1e-9
    talk(policy, 1.0)
    request = next_request(policy)
    assert request.duration <= 1.0 + policy.config.speech_pad + 0.1


def test_a_fresh_window_keeps_the_pad_before_speech_however_the_audio_came() -> None:
    # The detector says where speech began; the window then starts speech_pad before it,
    # whether the silence before came in one round of half a second or in tenths.
    for chunk in (0.1, 0.5):
        policy = make()
        while policy.audio_end < 3.0 - 1e-9:
            policy.push(chunk)
            assert policy.request() is None
        policy.push(chunk, policy.audio_end + chunk, starts=[3.0 + chunk / 2])
        assert policy.pending_voice
        assert policy.window_start == pytest.approx(3.0 + chunk / 2 - policy.config.speech_pad)


def test_a_stream_continuing_another_reads_its_audio_with_the_words_forced() -> None:
    """The first seconds were transcribed by the stream this one continues: the window
    starts with them, their words are the forced prefix of the first decode (no warm-up, no
    preview: the decoder is not starting cold), and they are never sent again."""
    policy = make(previews=True)
    policy.heard_before(6.0, "ask not what your country".split())
    for _ in range(60):
        policy.push(0.1, policy.audio_end + 0.1)
        if policy.audio_end < 6.0 - 1e-9:
            assert policy.request() is None  # nothing of its own to say yet
    assert policy.audio_end == pytest.approx(6.0)
    talk(policy, 0.5)
    request = next_request(policy)
    assert request.kind == "step" and request.start == 0.0
    assert request.prefix == "ask not what your country"
    update = policy.apply(request, Hypothesis.of(" can do for you."))
    assert update.delta == ""
    talk(policy, 0.5)
    update = decode(policy, " can do for you.")
    assert update.delta == " can do for you."  # a continuation: it begins with a space
    policy.finish()
    talk_done = policy.settle() or policy.apply(next_request(policy), Hypothesis.of(""))
    assert talk_done is not None
    assert policy.transcript == "can do for you."


def locate(policy: StreamingPolicy, ends: list[float] | None) -> DecodeRequest:
    """Answer a resumed stream's first request: where the words given lie in the audio heard
    before (each word ending at ``ends``, a quarter second long), or None if not found."""
    request = next_request(policy)
    assert request.kind == "align" and request.end == policy.heard_until
    spans = None if ends is None else tuple((end - 0.25, end) for end in ends)
    assert policy.apply(request, Hypothesis((), spans=spans)).delta == ""
    return request


def test_a_stream_resuming_a_lost_one_says_the_words_it_had_not_said_yet() -> None:
    """The lost stream's text reached "ask not what your"; the audio heard before holds
    "country" too. The first request finds where the words given end in that audio (3.8 s
    of 5), and the decodes after it continue after them: "country" is this stream's to say."""
    policy = make()
    policy.heard_before(5.0, "ask not what your".split(), complete=False)
    assert policy.window_start == 0.0
    talk(policy, 2.0)
    assert policy.request() is None  # the audio heard before is not all here yet
    talk(policy, 3.0)  # the rest of it, voiced to its end
    assert policy.due()
    request = locate(policy, [1.0, 2.0, 3.0, 3.8])
    assert request.start == 0.0 and request.prefix == "ask not what your"
    assert policy.settled_until == policy.onset == 3.8
    talk(policy, 0.5)
    request = next_request(policy)
    assert (request.kind, request.start, request.prefix) == ("step", 0.0, "ask not what your")
    decode(policy, " country can do")
    talk(policy, 0.5)
    update = decode(policy, " country can do for")
    assert update.delta == " country can do"
    assert policy.transcript == "country can do"


def test_a_resumed_stream_does_not_decode_the_pause_after_the_words_given() -> None:
    """The lost stream had said every word ("... the brothels.") and was cut in the pause
    after them. Asked to continue them over the pause, the decoder made words up ("The",
    then "the black woman" for "God, as a direct"). Found to end at 13.2 s of the 15 s
    heard, the words leave only silence to decode: none is, and the speech after the pause
    starts afresh."""
    policy = make()
    words = "the squalid quarter of the brothels.".split()
    policy.heard_before(15.0, words, complete=False)
    talk(policy, 13.2)
    talk(policy, 1.8, voice=False)
    locate(policy, [11.5, 11.8, 12.2, 12.5, 12.7, 13.2])
    talk(policy, 0.5, voice=False)
    assert not policy.due() and policy.request() is None
    talk(policy, 1.0)
    request = next_request(policy)
    assert request.kind == "step" and request.prefix.endswith("the brothels.")
    agreed(policy, 0.0, " God, as a direct")
    assert policy.transcript == "God, as a direct"


def test_a_resumed_streams_words_end_soon_after_their_last_word_starts() -> None:
    """Speech after the words given that no word accounts for is aligned to the last word
    ("out" over 2.4 s, where "and thick peppered" follows it): it is decoded, not settled."""
    policy = make()
    policy.heard_before(11.2, "to be ladled out".split(), complete=False)
    talk(policy, 11.2)
    request = next_request(policy)
    spans = ((5.9, 6.1), (6.1, 6.3), (6.3, 6.78), (6.78, 9.16))
    policy.apply(request, Hypothesis((), spans=spans))
    assert policy.settled_until == pytest.approx(6.78 + LONGEST_WORD)


def test_a_resumed_stream_whose_words_cannot_be_found_decodes_all_it_heard() -> None:
    policy = make()
    policy.heard_before(5.0, "ask not what your".split(), complete=False)
    talk(policy, 5.0)
    locate(policy, None)
    assert policy.settled_until == 0.0
    request = next_request(policy)
    assert request.kind == "step" and request.prefix == "ask not what your"


def test_a_resumed_stream_does_not_say_the_words_given_again() -> None:
    """The lost stream's last words were a misreading ("had been the same" for "had given
    her"): forced with them, the decoder reads the whole sentence again. The speech heard
    before runs on into the new audio, yet the repeat is judged by the audio after the
    words given (half a second cannot hold thirteen words): it is not said twice."""
    given = (
        "the brothels. God, as a direct consequence of the sin which man thus punished,"
        " had been the same."
    ).split()
    echo = " God, as a direct consequence of the sin which man thus punished, had given her"
    policy = make()
    policy.heard_before(15.0, given, complete=False)
    talk(policy, 15.0)  # voiced from the first chunk on: speech began before the seam
    assert policy.onset == 15.0
    locate(policy, [14.0 + k * 0.05 for k in range(len(given))])  # squeezed at the end
    assert policy.onset == pytest.approx(14.85)
    talk(policy, 0.5)
    assert decode(policy, echo).delta == ""
    talk(policy, 0.5)
    assert decode(policy, echo).delta == ""
    assert policy.transcript == ""


def test_heard_audio_longer_than_a_window_keeps_its_end_and_all_its_words() -> None:
    policy = make()
    policy.heard_before(18.0, "one two three four five six seven eight".split())
    assert policy.window_start == pytest.approx(
        18.0 - (policy.config.trim_at - policy.config.first_step)
    )
    talk(policy, 18.5)
    assert next_request(policy).prefix == "one two three four five six seven eight"


def test_first_decode_waits_for_a_second_of_speech() -> None:
    policy = make()
    talk(policy, 2.0, voice=False)
    talk(policy, 0.5)
    assert not policy.due() and policy.request() is None
    talk(policy, 0.5)
    assert policy.due()
    request = next_request(policy)
    assert request.kind == "step"
    assert request.prefix == "" and request.prompt == ""
    assert request.end == pytest.approx(3.0)
    assert request.start <= 2.0 - policy.config.speech_pad + 1e-9  # the onset is inside


def test_preview_shows_a_first_guess_half_a_second_into_speech() -> None:
    policy = make(previews=True, preview_step=0.5)
    talk(policy, 2.0, voice=False)
    talk(policy, 0.2)
    assert not policy.due()  # too little speech for a guess
    talk(policy, 0.3)
    assert policy.due()
    request = next_request(policy)
    assert request.kind == "preview" and not request.final
    update = policy.apply(request, Hypothesis.of(" Hello"))
    assert update == Update(delta="", partial="Hello")
    assert policy.committed == [] and policy.history == []
    assert not policy.due() and policy.request() is None  # one preview per onset
    talk(policy, 0.5)
    step = next_request(policy)
    assert step.kind == "step"
    # The preview never counts as an agreeing hypothesis: the first step commits nothing.
    assert policy.apply(step, Hypothesis.of(" Hello world")) == Update("", "Hello world")
    talk(policy, 0.5)
    assert decode(policy, " Hello world again").delta == "Hello world"


def test_preview_is_never_committed_by_a_pause() -> None:
    policy = make(previews=True)
    talk(policy, 0.6)
    request = next_request(policy)
    assert request.kind == "preview"
    policy.apply(request, Hypothesis.of(" Hell"))
    talk(policy, 1.2, voice=False)
    assert policy.settle() is None  # the guess is not the final word on the phrase
    phrase = next_request(policy)
    assert phrase.kind == "phrase"
    assert policy.apply(phrase, Hypothesis.of(" Hello.")).delta == "Hello."
    assert policy.tail == [] and not policy.previewing


def test_a_preview_without_words_is_tried_again_with_more_audio() -> None:
    policy = make(previews=True)
    talk(policy, 0.6)
    first = next_request(policy)
    assert first.kind == "preview"
    assert policy.apply(first, Hypothesis.of("")) == Update(delta="", partial=None)
    assert policy.request() is None  # no new audio yet
    talk(policy, 0.2)
    again = next_request(policy)
    assert again.kind == "preview" and again.end > first.end
    policy.apply(again, Hypothesis.of(" Good"))
    assert policy.tail == ["Good"]


def test_previews_are_off_without_a_reader_of_partials() -> None:
    policy = make(previews=False)
    talk(policy, 0.8)
    assert policy.request() is None
    with pytest.raises(ValueError):
        PolicyConfig(preview_step=-1)


# --------------------------------------------------------------------------- agreement


def test_shared_policy_caps_the_windows_and_takes_two_hypothesis_agreement() -> None:
    alone = PolicyConfig()
    shared = alone.shared()
    # Every shared window is encoded in every round: shorter, yet long enough to keep the
    # acoustic context that noisy and spontaneous speech needs.
    assert (shared.trim_at, shared.keep_audio, shared.max_window) == (10.0, 4.0, 15.0)
    # A lone stream configured with longer windows shares with these.
    long = PolicyConfig(trim_at=16.0, keep_audio=8.0, max_window=20.0).shared()
    assert (long.trim_at, long.keep_audio, long.max_window) == (10.0, 4.0, 15.0)
    # A configuration with shorter windows than these keeps its own.
    short = PolicyConfig(trim_at=6.0, keep_audio=2.0, max_window=8.0).shared()
    assert (short.trim_at, short.keep_audio, short.max_window) == (6.0, 2.0, 8.0)
    # Long shared windows are a lone stream's (more accurate, more engine time).
    roomy = alone.shared("long")
    assert (roomy.trim_at, roomy.keep_audio, roomy.max_window) == (16.0, 8.0, 20.0)
    assert roomy.confirm_span == shared.confirm_span
    with pytest.raises(ValueError, match="short, long"):
        alone.shared("huge")
    assert shared.confirm_span == 0.5 < alone.confirm_span
    # Shared steps come often and unevenly: a longer agreement for doubted words cost lag
    # there (six streams on the fixed schedule: p95 2.5 s against 2.0 s) for no accuracy.
    assert shared.unsure_span == shared.confirm_span
    transcripts = []
    for config in (shared, alone):
        policy = StreamingPolicy(config, previews=False)
        talk(policy, 1.0)
        for text in (" ask not", " ask what", " what"):  # each continues the confirmed text
            decode(policy, text)
            talk(policy, 0.5)
        transcripts.append(policy.transcript)
    # "what" follows "not" in the hypothesis of a second ago: only the shared policy, which
    # needs just the two latest to agree, confirms it.
    assert transcripts == ["ask what", "ask"]


def test_two_agreeing_hypotheses_commit_their_common_prefix() -> None:
    policy = make()
    talk(policy, 1.0)
    first = decode(policy, " Hello wor")
    assert first == Update(delta="", partial="Hello wor")
    talk(policy, 0.5)
    second = decode(policy, " Hello world, how")
    assert second.delta == "Hello"
    assert second.partial == "world, how"
    talk(policy, 0.5)
    request = next_request(policy)
    assert request.prefix == "Hello"
    third = policy.apply(request, Hypothesis.of(" world how are"))
    assert third.delta == " world how"  # punctuation-blind agreement, newest spelling
    assert policy.transcript == "Hello world how"
    assert policy.tail == ["are"]


def test_a_request_bounds_its_new_words_by_the_tail_and_the_new_audio() -> None:
    policy = make()
    talk(policy, 1.0)
    first = next_request(policy)
    assert first.max_words == 6 + 4  # 1 s at 6 words/s, + 4 spare
    policy.apply(first, Hypothesis.of(" We are just"))
    talk(policy, 0.5)
    second = next_request(policy)
    assert second.max_words == 3 + 3 + 4  # the tail, 0.5 s, spare


def test_a_decode_that_stopped_early_leaves_its_later_speech_to_count() -> None:
    policy = make()
    agreed(policy, 1.5, " Hello.", ends=(0.6, 0.6))
    # All committed, and the text stopped at 0.6 s with speech going on: restart there.
    assert policy.transcript == "Hello." and policy.window_start == pytest.approx(0.6)
    talk(policy, 0.5)
    request = policy.request()
    # 1.9 s of speech since 0.6 s, not just the 0.5 s since the last decode.
    assert request is not None and request.max_words == 12 + 4


def test_every_hypothesis_of_the_last_second_must_agree() -> None:
    policy = make(confirm_span=1.0, max_wait=10.0)
    talk(policy, 1.0)
    assert decode(policy, " one two").delta == ""
    talk(policy, 0.5)
    assert decode(policy, " one too three").delta == "one"  # only one earlier hypothesis
    talk(policy, 0.5)
    assert decode(policy, " two three four").delta == ""  # "too" half a second ago
    talk(policy, 0.5)
    assert decode(policy, " two three four five").delta == ""  # "too" a second ago
    talk(policy, 0.5)
    assert decode(policy, " two three four five six").delta == " two three four"


def test_slow_steps_need_only_two_hypotheses() -> None:
    policy = make(confirm_span=1.0)
    talk(policy, 1.0)
    assert decode(policy, " the engine").delta == ""
    talk(policy, 1.0)  # a busy engine: one step per second
    assert decode(policy, " the engine was busy").delta == "the engine"


def test_short_steps_need_hypotheses_reaching_back_a_full_step() -> None:
    # A shared engine steps a stream whenever it has a few tenths of a second of audio: two
    # hypotheses 0.3 s apart heard nearly the same audio, and their agreement proves little.
    policy = make(confirm_span=0.5, max_wait=10.0)
    talk(policy, 1.0)
    assert decode(policy, " one two").delta == ""
    talk(policy, 0.5)
    assert decode(policy, " one two three").delta == "one two"
    talk(policy, 0.3)
    # Only the hypothesis of 0.3 s ago has "three" (the one before stopped at "two"): with
    # the previous hypothesis alone it would be confirmed now.
    assert decode(policy, " three four").delta == ""
    talk(policy, 0.3)
    # Hypotheses 0.3 and 0.6 s old both have "three"; only the newer one has "four".
    assert decode(policy, " three four five").delta == " three"
    talk(policy, 0.3)
    assert decode(policy, " four five six").delta == " four"


def test_words_waiting_too_long_need_only_two_hypotheses() -> None:
    policy = make(confirm_span=1.0, max_wait=1.5)
    talk(policy, 1.0)
    decode(policy, " a b")
    talk(policy, 0.5)
    assert decode(policy, " x b").delta == ""
    talk(policy, 0.5)
    assert decode(policy, " a b c").delta == ""  # the three disagree on the first word
    talk(policy, 0.5)
    # "x" a second ago blocks the full agreement, but the words have waited 1.5 s.
    assert decode(policy, " a b c d").delta == "a b c"


def test_a_passage_read_two_ways_by_turns_is_committed_once_it_has_waited() -> None:
    # "ill-disposed", "old-sposed", "ill-disposed", ...: no two hypotheses in a row agree,
    # but once the words have waited 1.5 s, one earlier hypothesis agreeing is enough.
    policy = make(max_wait=1.5)
    talk(policy, 1.0)
    decode(policy, " ill-disposed.")
    talk(policy, 0.5)
    assert decode(policy, " old-sposed.").delta == ""
    talk(policy, 0.5)
    assert decode(policy, " ill-disposed. Had").delta == ""  # waited 1 s only
    talk(policy, 0.5)
    assert decode(policy, " old-sposed. Had he").delta == "old-sposed."
    talk(policy, 0.5)
    assert decode(policy, " Had he married").delta == " Had he"  # in a row again


def unsure(policy: StreamingPolicy, text: str, logprob: float) -> Update:
    """Half a second more speech, decoded as ``text`` with a mean token log-probability."""
    talk(policy, 0.5)
    hypothesis = Hypothesis((Piece(text),), avg_logprob=logprob)
    return policy.apply(next_request(policy), hypothesis)


@pytest.mark.parametrize("logprob", [-0.1, -0.6])
def test_words_the_decoder_is_unsure_of_wait_for_a_longer_agreement(logprob: float) -> None:
    # A hoarse speaker's "sick corpus": the decoder reads it one way, then another once it
    # hears more, and doubts every reading (mean token log-probability -0.55). Words it is
    # sure of need the hypotheses of the last second to agree; words it doubts, those of
    # the last two seconds.
    policy = make(confirm_span=1.0, unsure_span=2.0, max_wait=10.0)
    talk(policy, 0.5)
    texts = (" sixth form", *[" sick corpus"] * 5)
    deltas = [unsure(policy, text, logprob).delta for text in texts]
    if logprob > policy.config.unsure_logprob:
        assert deltas == ["", "", "", "sick corpus", "", ""]  # agreed since 1.5 s
    else:
        assert deltas == ["", "", "", "", "", "sick corpus"]  # "sixth" ruled out at 3.5 s


def test_words_the_decoder_is_unsure_of_wait_longer_for_any_two_to_agree() -> None:
    policy = make(confirm_span=1.0, unsure_span=2.0, max_wait=1.5)
    talk(policy, 0.5)
    texts = (" sixth form", " sick corpus", " six corpus", " sick corpus", " six corpus")
    deltas = [unsure(policy, text, -0.6).delta for text in texts]
    # No two in a row agree; sure words would be committed by any two after 1.5 s of
    # waiting, doubted ones only after 2.5 s.
    assert deltas == ["", "", "", "", ""]
    assert unsure(policy, " sick corpus", -0.6).delta == "sick corpus"


def test_hold_last_word_waits_for_a_following_word() -> None:
    policy = make(hold_last_word=True)
    talk(policy, 1.0)
    decode(policy, " good morning")
    talk(policy, 0.5)
    assert decode(policy, " good morning").delta == "good"
    talk(policy, 0.5)
    assert decode(policy, " morning everyone").delta == " morning"


def test_deltas_always_add_up_to_the_transcript() -> None:
    rng = random.Random(7)
    vocab = "the a cat sat on mat dog ran far away and then".split()
    for span in (0.5, 1.0):
        policy = make(confirm_span=span, trim_at=10.0, keep_audio=4.0, max_window=15.0)
        sent = ""
        truth = [rng.choice(vocab) for _ in range(400)]
        spoken = 0
        while policy.audio_end < 60:
            talk(policy, 0.5)
            spoken += 2
            request = policy.request()
            if request is None:
                continue
            start = len(policy.committed)
            guess = truth[start:spoken]
            if guess and rng.random() < 0.3:
                guess[-1] = rng.choice(vocab)  # the newest word is often wrong
            update = policy.apply(request, Hypothesis.of(" " + " ".join(guess)))
            sent += update.delta
            assert sent == policy.transcript
        assert policy.committed == truth[: len(policy.committed)] or span < 1
        assert len(policy.committed) > 100


# --------------------------------------------------------------------------- phrases and the end


def test_pause_after_decoded_speech_commits_the_tail_without_a_decode() -> None:
    policy = make()
    talk(policy, 1.0)
    decode(policy, " it was")
    talk(policy, 0.5)
    decode(policy, " it was late")
    assert policy.tail == ["late"]
    talk(policy, 0.5, voice=False)  # this step hears all the speech
    decode(policy, " lately")
    assert policy.tail == ["lately"]
    talk(policy, 0.5, voice=False)
    assert policy.silence >= policy.config.commit_silence
    update = policy.settle()
    assert update == Update(delta=" lately", partial="")
    assert not policy.pending_voice
    assert policy.request() is None


def test_pause_after_undecoded_speech_decodes_the_phrase_once_and_commits_it() -> None:
    policy = make()
    talk(policy, 1.0)
    decode(policy, " ask not")
    talk(policy, 0.4)  # speech the decoder has not heard yet
    talk(policy, 1.0, voice=False)
    assert policy.settle() is None
    request = next_request(policy)
    assert request.kind == "phrase" and request.final
    update = policy.apply(request, Hypothesis.of(" ask not what"))
    assert update.delta == "ask not what"
    assert policy.tail == [] and not policy.pending_voice
    assert policy.request() is None


def talk_voiced(policy: StreamingPolicy, seconds: float, *, voice: bool = True) -> None:
    """:func:`talk`, with the detector's count of voiced seconds (as the engine gives it)."""
    for _ in range(round(seconds * 10)):
        end = policy.audio_end + 0.1
        policy.push(0.1, end if voice else policy.last_voice, voiced=0.1 if voice else 0.0)


def closed_early(policy: StreamingPolicy, speech: float) -> None:
    """``speech`` seconds of speech that every decode reads as "his belly", closed at 2.0 s,
    then a pause long enough to end the phrase."""
    talk_voiced(policy, speech)
    decode(policy, " his belly", ends=(2.0,))
    talk_voiced(policy, 0.5, voice=False)
    decode(policy, " his belly", ends=(2.0,))
    assert policy.transcript == "his belly" and policy.tail == []
    talk_voiced(policy, 0.5, voice=False)
    assert policy.silence >= policy.config.commit_silence


def test_a_pause_does_not_settle_speech_after_the_decoders_closed_text() -> None:
    # "Stuff it into you, his belly counselled him", with the same sentence said again a
    # second later: the decoder closed its text after "his belly" though the speech went on
    # for 0.8 s. The pause does not settle that speech unheard: it is decoded on its own.
    policy = make()
    closed_early(policy, 2.8)
    assert policy.settle() == Update(delta="", partial=None)
    assert policy.window_start == pytest.approx(2.0)
    request = next_request(policy)
    assert request.kind == "phrase" and request.start == pytest.approx(2.0)
    assert "his belly" in request.prompt
    update = policy.apply(request, Hypothesis.of(" counselled him."))
    assert update.delta == " counselled him."
    assert policy.transcript == "his belly counselled him."
    assert policy.unread_resumed == 1 and policy.request() is None


def test_the_tail_of_the_last_word_after_a_closed_text_is_settled() -> None:
    # 0.3 s of voice after the text's end: the end of its last word, or a breath.
    policy = make()
    closed_early(policy, 2.3)
    policy.settle()
    assert policy.window_start == pytest.approx(0.0)
    assert policy.request() is None and policy.unread_resumed == 0
    assert policy.transcript == "his belly"


def test_end_of_audio_commits_everything_left() -> None:
    policy = make()
    talk(policy, 1.0)
    decode(policy, " go forward")
    talk(policy, 0.3)
    policy.finish()
    with pytest.raises(RuntimeError):
        policy.push(0.1)
    assert policy.settle() is None  # 0.3 s of speech was never decoded
    request = next_request(policy)
    assert request.kind == "end"
    assert policy.apply(request, Hypothesis.of(" go forward ten meters")).delta == (
        "go forward ten meters"
    )
    assert policy.done
    assert policy.request() is None


def test_end_of_audio_after_a_full_decode_needs_no_new_decode() -> None:
    policy = make()
    talk(policy, 1.0)
    decode(policy, " please call")
    talk(policy, 0.5, voice=False)
    decode(policy, " please call Stella.")
    policy.finish()
    update = policy.settle()
    assert update is not None and update.delta == " Stella."
    assert policy.transcript == "please call Stella."
    assert policy.done


# --------------------------------------------------------------------------- the window


def test_long_window_is_cut_at_a_committed_segment_end_keeping_context() -> None:
    policy = make(trim_at=10.0, keep_audio=4.0, max_window=15.0)
    talk(policy, 3.0)
    decode(policy, " First sentence here.", " Second one", ends=(2.0, None))
    talk(policy, 0.5)
    decode(policy, " First sentence here.", " Second one goes", ends=(2.0, None))
    assert policy.transcript == "First sentence here. Second one"
    assert policy.cuts == [(2.0, 3)]
    talk(policy, 8.0)
    request = next_request(policy)
    assert request.start == 0.0 and request.prefix == "First sentence here. Second one"
    policy.apply(request, Hypothesis.of(" goes on and on"))
    # An 11.5 s window, past trim_at: cut at 2.0 s, the only committed segment end.
    assert policy.window_start == 2.0
    assert policy.cuts == []
    talk(policy, 0.5)
    request = next_request(policy)
    assert request.start == 2.0
    assert request.prompt == "First sentence here."
    assert request.prefix == "Second one goes"


def test_segment_end_at_the_very_end_of_the_audio_is_not_a_cut_point() -> None:
    policy = make()
    agreed(policy, 1.0, " Ask not.", ends=(1.0, 1.5))
    assert policy.transcript == "Ask not."
    assert policy.cuts == []  # both ends sit at the end of their audio


def test_window_past_max_is_cut_at_an_unagreed_segment_end() -> None:
    policy = make(trim_at=10.0, keep_audio=4.0, max_window=15.0)
    talk(policy, 1.0)
    decode(policy, " a")
    for _ in range(30):
        talk(policy, 0.5)
        request = next_request(policy)
        n = round(policy.audio_end * 2)
        # Every hypothesis agrees with the previous one on one word only.
        words = " ".join(f"w{n}x{i}" for i in range(5))
        text = f" k{n} k{n + 1} {words}"
        policy.apply(request, Hypothesis.of(text, " tail", ends=(request.duration - 1,)))
        assert policy.window <= policy.config.max_window + policy.config.min_step
    assert len(policy.committed) > 5
    assert policy.forced_cuts == 0


def test_window_without_any_segment_end_is_cut_by_force() -> None:
    policy = make()
    talk(policy, 1.0)
    for i in range(40):
        talk(policy, 0.5)
        request = policy.request()
        if request is None:
            continue
        policy.apply(request, Hypothesis.of(f" x{i} y{i}"))  # never agrees, never ends
    assert policy.forced_cuts >= 1
    assert policy.window <= policy.config.max_window + policy.config.min_step
    assert policy.committed  # forced text went out rather than being lost


def long_phrase(policy: StreamingPolicy, seconds: float) -> list[str]:
    """Speech with a word every half second, all committed, never a segment end."""
    words: list[str] = []
    talk(policy, 1.0)
    while policy.audio_end < seconds - 1e-9:
        talk(policy, 0.5)
        request = next_request(policy)
        if request.kind == "align":
            return words
        words = [f"w{i}" for i in range(round(policy.audio_end * 2))]
        known = len(policy.committed)
        policy.apply(request, Hypothesis.of(" " + " ".join(words[known:])))
    return words


def test_a_long_phrase_is_cut_between_committed_words_at_a_pause() -> None:
    policy = make(trim_at=10.0, keep_audio=4.0, max_window=15.0)
    long_phrase(policy, 20.0)
    request = next_request(policy)
    assert request.kind == "align" and not request.final
    words = request.prefix.split()
    assert len(words) == policy.window_words > 20
    # Word k lies at [k/2, k/2 + 0.4) s; the detector found a pause between w17 and w18.
    policy.gaps.append(request.start + 8.95)
    spans = tuple((k / 2, k / 2 + 0.4) for k in range(len(words)))
    committed = list(policy.committed)
    update = policy.apply(request, Hypothesis((), spans=spans))
    assert update.delta == "" and policy.committed == committed  # nothing lost or added
    assert policy.window_start == pytest.approx(request.start + 8.95)
    after = policy.request()
    assert after is None or after.prefix.split()[0] == "w18"
    assert policy.window_words == len(words) - 18
    assert policy.forced_cuts == 0


def test_without_a_pause_the_cut_falls_between_two_words() -> None:
    policy = make(trim_at=10.0, keep_audio=4.0, max_window=15.0)
    long_phrase(policy, 20.0)
    request = next_request(policy)
    assert request.kind == "align"
    n = len(request.prefix.split())
    policy.gaps.clear()
    spans = tuple((k / 2, k / 2 + 0.4) for k in range(n))
    policy.apply(request, Hypothesis((), spans=spans))
    inside = policy.window_start - request.start
    k = n - policy.window_words  # the first word left in the window
    assert spans[k - 1][1] <= inside <= spans[k][0]
    assert policy.window <= policy.config.max_window


def test_without_word_times_a_long_phrase_is_cut_by_force() -> None:
    policy = make(trim_at=10.0, keep_audio=4.0, max_window=15.0)
    long_phrase(policy, 20.0)
    request = next_request(policy)
    assert request.kind == "align"
    policy.apply(request, Hypothesis((), spans=None))
    assert policy.forced_cuts == 1 and policy.window_words == 0
    assert policy.window_start == pytest.approx(policy.decoded_until)


def test_backlog_is_decoded_in_bounded_pieces() -> None:
    """A backlog is read in windows near Whisper's own 30 s, as an offline transcript is."""
    policy = make(trim_at=10.0, keep_audio=4.0, max_window=15.0)
    talk(policy, 60.0)  # the engine was busy for a minute
    request = next_request(policy)
    assert request.kind == "cut"
    assert request.duration == pytest.approx(policy.config.backlog_window)
    policy.apply(request, Hypothesis.of(" one two.", " three", ends=(6.0, None)))
    assert policy.transcript == "one two."
    assert policy.window_start == pytest.approx(6.0)
    assert policy.tail == []
    request = next_request(policy)
    assert request.kind == "cut" and request.start == 6.0
    policy.apply(request, Hypothesis.of(" three four"))  # no boundary: commit all, move on
    assert policy.window_start == pytest.approx(31.0)
    assert policy.forced_cuts == 1


def backlog(
    policy: StreamingPolicy, seconds: float, *, pause: float, quiet: tuple[float, float]
) -> None:
    """``seconds`` of backlog with a pause between words at ``pause`` and no voice in ``quiet``."""
    for _ in range(round(seconds * 10)):
        start = policy.audio_end
        end = start + 0.1
        silent = quiet[0] <= start + 0.05 < quiet[1]
        gaps = (pause,) if start < pause <= end else ()
        policy.push(0.1, end, gaps=gaps, voiced=0.0 if silent else 0.1)


def test_a_backlog_window_ending_in_a_pause_keeps_the_speech_its_text_did_not_reach() -> None:
    # The decode of a backlog window that ends in a pause stopped its text 0.8 s early
    # ("Alright, thanks." left out; too close to the pause for an early stop): the window
    # restarts where the text ended, so that speech is decoded again instead of skipped.
    policy = make()
    backlog(policy, 30.0, pause=20.0, quiet=(20.0, 20.3))
    request = next_request(policy)
    assert request.kind == "cut" and request.end == pytest.approx(20.0)
    policy.apply(request, Hypothesis.of(" One two.", " Three four.", ends=(9.0, 19.2)))
    assert policy.transcript == "One two. Three four."
    assert policy.window_start == pytest.approx(19.2)
    again = next_request(policy)
    assert again.start == pytest.approx(19.2)
    policy.apply(again, Hypothesis.of(" Alright, thanks.", ends=(0.7,)))
    shown = policy.committed + policy.tail  # committed, or waiting for agreement
    assert shown[:6] == ["One", "two.", "Three", "four.", "Alright,", "thanks."]


def test_a_backlog_window_whose_text_reaches_its_pause_moves_past_it() -> None:
    # Silence between the text's end and the pause: nothing to decode again.
    policy = make()
    backlog(policy, 30.0, pause=20.0, quiet=(19.2, 20.3))
    request = next_request(policy)
    assert request.end == pytest.approx(20.0)
    policy.apply(request, Hypothesis.of(" One two.", " Three four.", ends=(9.0, 19.2)))
    assert policy.window_start == pytest.approx(20.0)


def test_prompt_is_bounded_and_starts_at_a_word() -> None:
    policy = make(prompt_chars=20)
    policy.committed = [f"word{i}" for i in range(30)]
    policy.window_words = 2
    talk(policy, 1.0)
    request = next_request(policy)
    assert request.prefix == "word28 word29"
    assert len(request.prompt) <= 20
    assert request.prompt.endswith("word27")
    assert request.prompt.split()[0].startswith("word")
    assert f" {request.prompt}".startswith(" word")


def test_context_is_the_prompt_of_a_new_stream_until_its_own_words_fill_it() -> None:
    # A stream that continues a long session starts with the text said before its audio,
    # as the committed words before the window are to a stream that never ended.
    policy = make(prompt_chars=40)
    policy.context = "when the sunlight strikes raindrops in the air,".split()
    talk(policy, 1.0)
    first = next_request(policy)
    assert first.prefix == "" and first.prompt == "sunlight strikes raindrops in the air,"
    policy.apply(first, Hypothesis.of(" they act as"))
    talk(policy, 0.5)
    assert decode(policy, " they act as a prism").delta == "they act as"
    policy.committed += "and form a rainbow".split()
    policy.window_words = 0  # everything committed lies before the window now
    talk(policy, 0.5)
    request = next_request(policy)
    assert request.prompt.endswith("air, they act as and form a rainbow")
    assert "they act as" not in policy.context  # the context is never transcribed
    assert policy.transcript == "they act as and form a rainbow"


def test_a_new_stream_echoing_its_context_is_cut() -> None:
    policy = make(echo_words=5)
    policy.context = "we are just saying some words".split()
    talk(policy, 1.0)
    request = next_request(policy)
    echo = Hypothesis.of(" we are just saying some words and more")
    # Five words of context said again in a second of audio: an echo, not speech.
    assert policy.words_of(request, echo) == []


def test_stale_request_is_refused() -> None:
    policy = make()
    talk(policy, 1.0)
    request = next_request(policy)
    moved = DecodeRequest(request.start + 1, request.end, "", "", "step")
    with pytest.raises(ValueError):
        policy.apply(moved, Hypothesis.of(" x"))


# --------------------------------------------------------------------------- hallucination guards


def test_silence_verdict_from_the_decoder_commits_nothing() -> None:
    policy = make()
    talk(policy, 1.0)
    request = next_request(policy)
    hyp = Hypothesis((Piece(" Thank you."),), no_speech_prob=0.9, avg_logprob=-1.5)
    assert policy.words_of(request, hyp) == []
    assert policy.apply(request, hyp).partial is None


def test_speech_a_dropped_hypothesis_ended_is_decoded_again() -> None:
    # The decoder called a real phrase silence: its words are dropped, but the speech they
    # covered is not settled, so the next step decodes it again and nothing is lost.
    policy = make()
    talk(policy, 2.0)
    decode(policy, " Here's a long pause.")
    talk(policy, 0.5)
    request = next_request(policy)
    unsure = Hypothesis((Piece(" Here's a long pause and I", None, 3.0),), 0.9, -1.5)
    policy.apply(request, unsure)
    assert policy.tail == []
    assert policy.pending_voice
    talk(policy, 0.5)
    decode(policy, " Here's a long pause and I think")
    talk(policy, 0.5)
    decode(policy, " Here's a long pause and I think so")
    assert policy.transcript.startswith("Here's a long pause and I")


def test_a_lone_guess_at_a_noise_is_not_committed_by_a_pause() -> None:
    # An "uh", decoded once as "you" with a no-speech probability of 0.97, then a pause: the
    # guess is dropped. Committed, it would be forced on the next phrase's decodes.
    policy = make()
    agreed(policy, 1.0, " It was late.", ends=(1.0, 1.0))
    talk(policy, 1.0, voice=False)
    policy.settle()
    assert policy.transcript == "It was late."
    talk(policy, 1.0)
    talk(policy, 0.5, voice=False)
    policy.apply(next_request(policy), Hypothesis((Piece(" you", None, 1.5),), 0.97, -0.7))
    assert policy.tail == ["you"]
    talk(policy, 1.5, voice=False)
    assert policy.settle() == Update(delta="", partial="")
    assert policy.transcript == "It was late."
    talk(policy, 1.5)
    assert "you" not in next_request(policy).prefix.split()


def test_a_short_answer_the_decoder_doubts_less_is_committed_by_a_pause() -> None:
    policy = make()
    talk(policy, 1.0)
    talk(policy, 0.5, voice=False)
    policy.apply(next_request(policy), Hypothesis((Piece(" Yes.", None, 1.0),), 0.85, -0.4))
    talk(policy, 1.5, voice=False)
    assert policy.settle() == Update(delta="Yes.", partial="")


def test_the_window_does_not_skip_speech_whose_decode_was_called_silence() -> None:
    # A decode over voice that reads as silence ends its (dropped) text at a segment end:
    # restarting the window there would skip the speech before it for good.
    policy = make()
    talk(policy, 3.0)
    request = next_request(policy)
    garbled = Hypothesis((Piece(" can see that there's a lot of", None, 2.0),), 0.8, -1.3)
    policy.apply(request, garbled)
    assert policy.window_start == request.start
    talk(policy, 0.5)
    decode(policy, " And here's a long pause and")
    talk(policy, 0.5)
    decode(policy, " And here's a long pause and I")
    assert policy.transcript.startswith("And here's a long pause")


def end_phrase(policy: StreamingPolicy, text: str) -> None:
    """A pause: the phrase is committed, without a decode or with a last one saying ``text``."""
    talk(policy, 1.5, voice=False)
    if policy.settle() is None:
        request = next_request(policy)
        assert request.final
        policy.apply(request, Hypothesis.of(text))
    assert not policy.tail


def test_after_a_loop_the_phrase_is_decoded_without_the_text_prompt() -> None:
    policy = make()
    agreed(policy, 1.0, " Ask not.", ends=(0.5, 0.5))
    end_phrase(policy, " Ask not.")
    talk(policy, 1.0)
    request = next_request(policy)
    assert request.prompt == "Ask not."
    looping = " to be a woman who is not a woman who is not a woman"
    policy.apply(request, Hypothesis.of(looping))
    assert policy.tail == "to be a woman who is not".split()
    talk(policy, 0.5)
    request = next_request(policy)
    assert request.prompt == ""  # the prompt led it into the loop
    policy.apply(request, Hypothesis.of(" what your country"))
    end_phrase(policy, " what your country")
    talk(policy, 1.0)
    request = next_request(policy)
    assert request.prompt  # the phrase was committed: back


def test_a_prefix_that_leads_every_decode_into_a_loop_is_no_longer_forced() -> None:
    """A word made up over a noise ("A.") is committed by two hypotheses that both began with
    it; forced as the prefix, it makes each later decode say it over and over and keep
    nothing, and the phrase's end would settle the speech after it unheard. The window's
    words then stop being the prefix: its audio is read afresh, and words said again from
    its start are dropped, so that nothing is said twice."""
    policy = make()
    agreed(policy, 1.0, " I have a cold.")
    talk(policy, 0.5)
    decode(policy, " A.", " The strict")
    talk(policy, 0.5)
    decode(policy, " A.", " Who's strict")
    assert policy.transcript == "I have a cold. A."
    for _ in range(3):  # once or twice may be real speech: "words words words words"
        talk(policy, 0.5)
        request = next_request(policy)
        assert request.prefix == "I have a cold. A."
        policy.apply(request, Hypothesis.of(" A. A. A. A. A. A. A. A."))
        assert policy.tail == [] and policy.transcript == "I have a cold. A."
    talk(policy, 0.5)
    request = next_request(policy)
    assert request.prefix == "" and request.start == 0.0  # the same audio, nothing forced
    policy.apply(request, Hypothesis.of(" I have a cold. The reporting environment"))
    assert policy.tail == "The reporting environment".split()  # said again: dropped
    talk(policy, 0.5)
    decode(policy, " I have a cold. The reporting environment is")
    assert policy.transcript == "I have a cold. A. The reporting environment"
    talk(policy, 0.5)
    request = next_request(policy)
    assert request.prefix == ""  # still read from the window's start, until it moves
    policy.apply(request, Hypothesis.of(" I have a cold. The reporting environment is also"))
    assert policy.transcript == "I have a cold. A. The reporting environment is"
    assert policy.tail == ["also"]  # "A." is in no re-reading: skipped, not a stop


def test_segments_after_the_audio_and_loops_are_dropped() -> None:
    policy = make()
    talk(policy, 1.0)
    request = next_request(policy)
    late = Hypothesis((Piece(" real words", None, 0.5), Piece(" invented", request.duration)))
    assert policy.words_of(request, late) == [["real", "words"]]
    loop = Hypothesis.of(" go on go on go on")  # six words in one second
    assert policy.words_of(request, loop) == [["go", "on"]]
    glued = Hypothesis.of(" than the" + "...the" * 40)
    assert policy.words_of(request, glued) == [["than"]]


def test_a_repeat_the_audio_has_room_for_is_speech() -> None:
    """A phrase said three times, over audio long enough to say it: a chant, kept."""
    policy = make()
    talk(policy, 3.0)
    request = next_request(policy)
    chant = Hypothesis.of(" go on go on go on")
    assert policy.words_of(request, chant) == [["go", "on"] * 3]
    twice = Hypothesis.of(" Go forward ten meters.", " Go forward ten meters.", ends=(1.4,))
    assert policy.words_of(request, twice) == [
        ["Go", "forward", "ten", "meters."],
        ["Go", "forward", "ten", "meters."],
    ]
    assert policy.repeats_judged == 2 and policy.repeats_kept == 2


def test_echo_of_committed_text_is_dropped() -> None:
    policy = make(echo_words=5)
    policy.committed = "we are just saying some words".split()
    policy.window_words = 6
    talk(policy, 1.0)
    request = next_request(policy)
    echo = Hypothesis.of(" and we are just saying some words again")
    assert policy.words_of(request, echo) == [["and"]]
    assert policy.repeats_judged == 1 and policy.repeats_kept == 0


SENTENCE = " ask what you can do for your country."


def say_once(policy: StreamingPolicy) -> None:
    """Three seconds of speech, decoded twice, committed at the pause after it."""
    talk(policy, 3.0)
    decode(policy, SENTENCE)
    talk(policy, 0.5, voice=False)
    decode(policy, SENTENCE, ends=(3.0,))
    talk(policy, 1.0, voice=False)
    policy.settle()
    assert policy.request() is None
    assert policy.transcript == SENTENCE.strip()


def test_a_sentence_said_again_after_a_pause_is_kept() -> None:
    """A speaker says the committed sentence once more: its audio holds every word."""
    policy = make()
    say_once(policy)
    talk(policy, 3.0)
    while (request := policy.request()) is not None and not request.final:
        policy.apply(request, Hypothesis.of(SENTENCE))
        talk(policy, 0.5, voice=False)
    end_phrase(policy, SENTENCE)
    assert policy.transcript == f"{SENTENCE.strip()}{SENTENCE}"
    assert policy.repeats_kept >= 1


def test_the_decoder_running_ahead_of_a_repeat_waits_for_its_audio() -> None:
    """Knowing the sentence from its context, the decoder writes all of it after a second of
    its repeat: too soon to be heard, so cut; once the audio holds it, kept."""
    policy = make()
    say_once(policy)
    talk(policy, 1.0)
    request = next_request(policy)
    policy.apply(request, Hypothesis.of(SENTENCE))
    assert policy.tail == [] and policy.repeats_kept == 0
    talk(policy, 1.5)
    request = next_request(policy)
    policy.apply(request, Hypothesis.of(SENTENCE))
    assert " ".join(policy.tail) == SENTENCE.strip()
    assert policy.repeats_kept == 1


def test_a_final_decode_that_hears_no_speech_over_voice_is_decoded_again() -> None:
    """The voice detector heard a sentence; the phrase's last decode calls it silence. Nothing
    is settled on one such judgement: the same audio is decoded again, without the prompt."""
    policy = make()
    policy.committed = "earlier words".split()
    talk(policy, 2.0)
    talk(policy, 1.5, voice=False)
    request = next_request(policy)
    assert request.kind == "phrase" and request.prompt
    silent = Hypothesis((Piece(" we are here"),), no_speech_prob=0.9, avg_logprob=-1.2)
    assert policy.apply(request, silent) == Update(delta="", partial=None)
    again = next_request(policy)
    assert again.kind == "phrase" and again.prompt == ""
    assert (again.start, again.end) == (request.start, request.end)
    assert policy.apply(again, Hypothesis.of(" we are here")).delta == " we are here"
    assert policy.request() is None


def test_two_decodes_that_hear_no_speech_commit_nothing() -> None:
    policy = make()
    talk(policy, 2.0)
    policy.finish()
    silent = Hypothesis((Piece(" thank you"),), no_speech_prob=0.9, avg_logprob=-1.5)
    for _ in range(2):
        request = next_request(policy)
        assert request.kind == "end"
        policy.apply(request, silent)
    assert policy.transcript == "" and policy.done


def test_a_decode_that_skips_a_passage_it_has_in_its_context_is_decoded_again() -> None:
    """Twelve seconds of voice, one short sentence: the decoder, prompted with a passage,
    skipped the same passage said again. The window is decoded once more, unprompted."""
    policy = make()
    policy.committed = "god as a direct consequence of the sin".split()
    for _ in range(120):
        policy.push(0.1, policy.audio_end + 0.1, voiced=0.1)
    policy.finish()
    request = next_request(policy)
    assert request.final and request.prompt
    assert policy.voiced(request.start, request.end) == pytest.approx(12.0)
    assert policy.apply(request, Hypothesis.of(" Yet these thoughts.")).delta == ""
    again = next_request(policy)
    assert again.prompt == ""
    passage = " god as a direct consequence of the sin yet these thoughts"
    assert policy.apply(again, Hypothesis.of(passage)).delta == passage


def test_a_final_decode_that_stops_short_of_the_speech_is_continued() -> None:
    """A command said twice: the last decode says it once, its text ending at a segment end
    a second and more before the speech does. The same audio is decoded once more, after
    the words already said, and the repeat (which the audio has room for) is kept."""
    policy = make()
    talk(policy, 5.0)
    policy.finish()
    request = next_request(policy)
    assert request.kind == "end"
    policy.apply(request, Hypothesis.of(" Go forward ten meters.", ends=(3.5,)))
    assert policy.transcript == "Go forward ten meters."
    again = next_request(policy)
    assert again.kind == "end"
    assert again.start == request.start and again.prefix == "Go forward ten meters."
    policy.apply(again, Hypothesis.of(" Go forward ten meters.", ends=(4.9,)))
    assert policy.transcript == "Go forward ten meters. Go forward ten meters."
    assert policy.request() is None and policy.done


def test_a_final_decode_that_adds_nothing_before_more_speech_restarts_the_window() -> None:
    """The end of a backlog: a window of confirmed words, then six seconds of another
    sentence. The final decode adds nothing after the confirmed words and closes their segment
    six seconds before the end; decoding the same window with the same prefix again would
    read the same, and settling it would drop the sentence. The window restarts there."""
    policy = make()
    agreed(policy, 8.0, " in the original one.")
    talk(policy, 6.0)
    policy.finish()
    request = next_request(policy)
    assert request.kind == "end" and request.prefix == "in the original one."
    policy.apply(request, Hypothesis.of("", ends=(request.duration - 6.0,)))
    again = next_request(policy)
    assert again.kind == "end"
    assert again.start == pytest.approx(request.end - 6.0) and again.prefix == ""
    assert again.prompt.endswith("in the original one.")
    policy.apply(again, Hypothesis.of(" Here's a long pause and I think this is probably good."))
    said = "original one. Here's a long pause and I think this is probably good."
    assert policy.transcript.endswith(said)
    assert policy.request() is None and policy.done


def test_a_phrase_four_times_on_end_is_a_loop_whatever_the_audio() -> None:
    policy = make()
    talk(policy, 6.0)
    request = next_request(policy)
    loop = Hypothesis.of(" thank you thank you thank you thank you thank you for supporting")
    assert policy.words_of(request, loop) == [["thank", "you"]]
    three = Hypothesis.of(" stuff it into you stuff it into you stuff it into you")
    assert policy.words_of(request, three) == [["stuff", "it", "into", "you"] * 3]


def test_a_loop_on_a_term_that_crowds_the_audio_keeps_no_copy() -> None:
    """The decoder reads the session's terms before every window and may loop on the last one
    over speech that says something else: ten "Boston," in two seconds. Other loops keep their
    first copy (it usually was said); this one began in the context, so none of it is kept,
    unless the audio has room for every copy (a person saying the term over and over)."""
    looping = Hypothesis.of(" Boston," * 10)
    policy = make(terms=frozenset({"hester", "prynne", "boston"}))
    talk(policy, 2.0)
    assert policy.words_of(next_request(policy), looping) == []
    assert policy.guarded
    other = make()  # the same loop without the terms: a loop of a word that was said
    talk(other, 2.0)
    assert other.words_of(next_request(other), looping) == [["Boston,"]]
    roomy = make(terms=frozenset({"boston"}))
    talk(roomy, 6.0)
    assert roomy.words_of(next_request(roomy), looping) == [["Boston,"]]
    said = Hypothesis.of(" Hester Prynne, Boston," + " Boston," * 9)  # loop after said words
    assert policy.words_of(next_request(policy), said) == [["Hester", "Prynne,"]]


def test_one_word_four_times_is_speech_and_what_follows_it_is_kept() -> None:
    """Said: "here are some more words words words words and that should be all". One word four
    times on end is emphasis (the loop guard for one word starts at five)."""
    policy = make()
    policy.committed = "here are some more words.".split()
    talk(policy, 4.0)
    request = next_request(policy)
    said = Hypothesis.of(" Words words words. And that should be all.")
    assert policy.words_of(request, said) == ["Words words words. And that should be all.".split()]
    assert not policy.guarded


def test_audio_after_a_guard_cut_is_not_counted_as_decoded() -> None:
    """A decode cut by a guard says nothing of the audio after the cut: that audio is decoded
    again, and at the end of the stream a final decode runs rather than a settle."""
    policy = make()
    talk(policy, 2.0)
    request = next_request(policy)
    policy.apply(request, Hypothesis.of(" yes yes yes yes yes yes and then we went"))
    assert policy.guarded and policy.tail == ["yes"]
    assert policy.decoded_until < request.end
    policy.finish()
    assert policy.settle() is None
    final = next_request(policy)
    assert final.kind == "end"


def test_a_final_decode_a_guard_cut_short_is_decoded_again() -> None:
    policy = make()
    policy.committed = "earlier words".split()
    talk(policy, 2.0)
    policy.finish()
    request = next_request(policy)
    assert request.kind == "end" and request.prompt
    looped = Hypothesis.of(" so so so so so so and then we went home")
    assert policy.apply(request, looped).delta == ""
    again = next_request(policy)
    assert again.kind == "end" and again.prompt == ""
    assert policy.apply(again, looped).delta == " so"  # judged once more, then settled
    assert policy.done
