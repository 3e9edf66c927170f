"""The Realtime codec: what goes over the wire, and which error code each bad frame earns."""

from __future__ import annotations

import base64
import json

import pytest

from components.core import protocol as p


def test_client_events_round_trip() -> None:
    for event in (
        p.SessionUpdate(model="m"),
        p.SessionUpdate(model="m", partials=True),
        p.InputAudioBufferAppend(b"\x01\x00\xff\x7f"),
        p.InputAudioBufferCommit(),
        p.InputAudioBufferCommit(final=True),
    ):
        assert p.parse_client_event(p.serialize(event)) == event


def test_server_events_round_trip() -> None:
    for event in (
        p.SessionCreated(id="sess-1", created=5),
        p.TranscriptionDelta(delta=" hello"),
        p.TranscriptionPartial(text=" wor"),
        p.TranscriptionDone(text="hello world", usage=p.Usage(3, 4)),
        p.TranscriptionDone(text=""),
        p.ErrorEvent(error="boom", code="processing_error"),
    ):
        assert p.parse_server_event(p.serialize(event)) == event


def test_wire_shapes_match_vllm() -> None:
    assert json.loads(p.serialize(p.TranscriptionDone("hi", p.Usage(2, 1)))) == {
        "type": "transcription.done",
        "text": "hi",
        "usage": {
            "prompt_tokens": 2,
            "total_tokens": 3,
            "completion_tokens": 1,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
    }
    assert list(json.loads(p.serialize(p.SessionCreated()))) == ["type", "id", "created"]
    assert p.SessionCreated().id.startswith("sess-")
    append = json.loads(p.serialize(p.InputAudioBufferAppend(b"\x00\x01")))
    assert base64.b64decode(append["audio"]) == b"\x00\x01"
    # A plain session.update carries no extension key.
    assert json.loads(p.serialize(p.SessionUpdate(model="m"))) == {
        "type": "session.update",
        "model": "m",
    }


def test_commit_defaults_to_non_final() -> None:
    assert (
        p.parse_client_event('{"type":"input_audio_buffer.commit"}') == p.InputAudioBufferCommit()
    )


def test_session_update_ignores_unknown_keys() -> None:
    event = p.parse_client_event('{"type":"session.update","model":"m","voice":"x","x":[1]}')
    assert event == p.SessionUpdate(model="m")


def test_session_update_carries_language_and_prompt() -> None:
    frame = json.dumps(
        {"type": "session.update", "model": "m", "language": "DE ", "prompt": " Hester\n Prynne "}
    )
    event = p.parse_client_event(frame)
    assert event == p.SessionUpdate(model="m", language="de", prompt="Hester Prynne")
    assert event.options == p.SessionOptions(language="de", prompt="Hester Prynne")
    assert p.parse_client_event(p.serialize(event)) == event


def test_session_update_carries_the_text_said_before_its_audio() -> None:
    frame = json.dumps({"type": "session.update", "model": "m", "context": " in the\n air, "})
    event = p.parse_client_event(frame)
    assert event == p.SessionUpdate(model="m", context="in the air,")
    assert event.options.context == "in the air," and event.options
    assert json.loads(p.serialize(event))["context"] == "in the air,"
    assert p.parse_client_event(p.serialize(event)) == event


def test_a_long_context_keeps_its_end_from_a_word_on() -> None:
    words = " ".join(f"w{i}" for i in range(400))
    context = p.SessionOptions.checked(context=words).context
    assert context is not None and len(context) <= p.MAX_CONTEXT_CHARS
    assert context.endswith("w398 w399") and words.endswith(context)
    assert context.split()[0] in words.split()  # no word cut in half
    with pytest.raises(p.ProtocolError) as info:
        p.SessionOptions.checked(context=["air"])
    assert info.value.code == "invalid_event"


def test_session_update_may_mark_its_first_audio_as_heard_before() -> None:
    frame = json.dumps(
        {
            "type": "session.update",
            "model": "m",
            "context": "and so my fellow Americans",
            "context_audio": {"seconds": 6.5, "words": 3},
        }
    )
    event = p.parse_client_event(frame)
    assert event.context_audio == p.ContextAudio(seconds=6.5, words=3)
    assert event.options.context_audio == event.context_audio
    assert json.loads(p.serialize(event))["context_audio"] == {"seconds": 6.5, "words": 3}
    assert p.parse_client_event(p.serialize(event)) == event
    # A stream lost before it said that audio's last words: the engine says them.
    resumed = p.SessionUpdate(
        model="m", context="ask not", context_audio=p.ContextAudio(4.0, 2, complete=False)
    )
    assert json.loads(p.serialize(resumed))["context_audio"]["complete"] is False
    assert p.parse_client_event(p.serialize(resumed)) == resumed


@pytest.mark.parametrize(
    "context_audio",
    [
        [6.5, 3],
        {"seconds": "6.5", "words": 3},
        {"seconds": 0, "words": 3},
        {"seconds": p.MAX_CONTEXT_AUDIO_SECONDS + 1, "words": 3},
        {"seconds": 6.5, "words": 0},
        {"seconds": 6.5, "words": 6},  # more words than the context holds
        {"seconds": 6.5, "words": True},
        {"seconds": 6.5, "words": 3, "complete": "no"},
    ],
)
def test_heard_audio_whose_words_are_not_all_given_is_refused(context_audio: object) -> None:
    """Words the context lacks would be transcribed a second time: refused, not trimmed."""
    frame = json.dumps(
        {
            "type": "session.update",
            "model": "m",
            "context": "and so my fellow Americans",
            "context_audio": context_audio,
        }
    )
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_event(frame)
    assert info.value.code == "invalid_event"
    with pytest.raises(p.ProtocolError):  # and without any context at all
        p.SessionOptions.checked(context_audio={"seconds": 6.5, "words": 1})


def test_session_created_announces_the_extensions_its_engine_reads() -> None:
    event = p.SessionCreated(id="sess-1", created=1, extensions=(p.CONTEXT_AUDIO_KEY,))
    wire = json.loads(p.serialize(event))
    assert wire["extensions"] == ["context_audio"]
    assert p.parse_server_event(p.serialize(event)).extensions == ("context_audio",)
    plain = json.dumps({"type": "session.created", "id": "sess-2", "created": 1})
    assert p.parse_server_event(plain).extensions == ()  # vLLM announces none
    assert "extensions" not in json.loads(p.serialize(p.SessionCreated(id="s", created=1)))


def test_blank_options_mean_none() -> None:
    frame = '{"type":"session.update","model":"m","language":"","prompt":"  ","context":" "}'
    event = p.parse_client_event(frame)
    assert event == p.SessionUpdate(model="m")
    assert not event.options
    assert "language" not in p.serialize(event) and "prompt" not in p.serialize(event)
    assert "context" not in p.serialize(event)


def test_prompt_bound_is_inclusive() -> None:
    assert p.SessionOptions.checked(prompt="a" * p.MAX_PROMPT_CHARS).prompt == "a" * 500
    with pytest.raises(p.ProtocolError) as info:
        p.SessionOptions.checked(prompt="a" * (p.MAX_PROMPT_CHARS + 1))
    assert info.value.code == "prompt_too_long"
    assert "501 characters" in info.value.message and "at most 500" in info.value.message
    with pytest.raises(p.ProtocolError):
        p.SessionOptions.checked(prompt="abcdef", max_prompt_chars=5)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"language": "xx"}, "unknown_language"),
        ({"language": "english"}, "unknown_language"),
        ({"language": "yue"}, "unknown_language"),
        ({"language": 7}, "invalid_event"),
        ({"prompt": ["Hester"]}, "invalid_event"),
        ({"prompt": "word " * 120}, "prompt_too_long"),
    ],
)
def test_bad_session_options_get_their_codes(fields: dict[str, object], code: str) -> None:
    frame = json.dumps({"type": "session.update", "model": "m", **fields})
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_event(frame)
    assert info.value.code == code
    assert info.value.code == "invalid_event" or info.value.code in p.OPTION_CODES


def test_unknown_language_message_says_what_to_send() -> None:
    with pytest.raises(p.ProtocolError, match=r"'xx'.*ISO-639-1 code such as 'en'"):
        p.SessionOptions.checked(language="xx")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1,2]", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        ('{"type":"response.create"}', "unknown_event"),
        ("{}", "unknown_event"),
        ('{"type":"session.update"}', "invalid_event"),
        ('{"type":"session.update","model":3}', "invalid_event"),
        ('{"type":"input_audio_buffer.append"}', "invalid_audio"),
        ('{"type":"input_audio_buffer.append","audio":"%%%"}', "invalid_audio"),
        ('{"type":"input_audio_buffer.append","audio":""}', "invalid_audio"),
        ('{"type":"input_audio_buffer.append","audio":5}', "invalid_audio"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": b64(b"\x00")}), "invalid_audio"),
        ('{"type":"input_audio_buffer.commit","final":"yes"}', "processing_error"),
    ],
)
def test_bad_client_frames_get_vllm_codes(frame: str | bytes, code: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_event(frame)
    assert info.value.code == code
    assert info.value.message


def test_unknown_event_message_names_the_type() -> None:
    with pytest.raises(p.ProtocolError, match="Unknown event type: nope"):
        p.parse_client_event('{"type":"nope"}')


def test_oversized_append_is_refused() -> None:
    frame = p.serialize(p.InputAudioBufferAppend(b"\x00" * 2048))
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_event(frame, max_audio_bytes=1024)
    assert info.value.code == "invalid_audio"
    assert p.parse_client_event(frame, max_audio_bytes=2048).samples == 1024


def test_malformed_server_event_is_an_error() -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_server_event('{"type":"transcription.delta"}')
    assert info.value.code == "invalid_event"
    with pytest.raises(p.ProtocolError):
        p.parse_server_event('{"type":"transcription.delta","delta":5}')
