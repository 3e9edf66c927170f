"""The Realtime wire protocol of vLLM's ``/v1/realtime``, in one place.

Every server, bridge and client in this project speaks through this module; nobody else builds
or picks apart event JSON. It is sans-I/O: plain functions over ``str``/``bytes`` and frozen
dataclasses, so the protocol can be tested exhaustively without sockets.

Wire facts (vLLM 0.32 and 0.33, ``vllm/entrypoints/speech_to_text/realtime``): JSON text frames;
audio is base64 PCM16 little-endian, 16 kHz, mono. Parsing a client event yields vLLM's own error
codes so that a client written for ``vllm serve`` sees the same errors from our server.

One opt-in extension: a client that sends ``"partials": true`` in ``session.update`` may also
receive ``transcription.partial`` events carrying the not-yet-confirmed tail. vLLM ignores the
extra key, and a plain client never sees the extra event, so compatibility holds both ways.

``session.update`` may also carry ``language`` (ISO-639-1) and ``prompt`` (names, terms, domain
context), as vLLM's clients after 0.34 send them. They are validated here (``unknown_language``,
``prompt_too_long``); whether an engine can act on them is the server's business. A refused
``session.update`` changes nothing and the session stays open.

A second opt-in extension: ``context``, the transcript of what was said just before this
session's audio (a client that continues a long session on a new stream sends the previous
stream's text). An engine that reads text context (Whisper) hears the new stream's first words
as it would have heard them in one stream; one that cannot ignores it, and so does vLLM.

A third, negotiated: ``context_audio`` ({"seconds": s, "words": n}) says that the first ``s``
seconds of the session's audio were transcribed before and that their words are among the
last ``n`` words of ``context`` (a few more are harmless: they are read as said just before;
with ``"complete": false`` the audio's last words may be missing, and are transcribed).
An engine that reads it hears that audio as acoustic context, with those words forced rather
than transcribed again, so a new stream starts with what the old one heard. A server
announces it in ``session.created`` (``"extensions": ["context_audio"]``); a client sends it
only to a server that did, since any other would transcribe that audio a second time.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from components.core.languages import ISO_639_1

SAMPLE_RATE = 16_000
"""Sample rate of protocol audio (Hz)."""

BYTES_PER_SAMPLE = 2
"""PCM16: two bytes per sample."""

DEFAULT_MAX_APPEND_BYTES = 8 * 1024 * 1024
"""Largest decoded audio payload accepted in one append (about 4.4 minutes of audio)."""

PARTIALS_KEY = "partials"
"""``session.update`` key with which a client opts in to ``transcription.partial`` events."""

CONTEXT_KEY = "context"
"""``session.update`` key carrying the text said before the session's audio (an extension)."""

CONTEXT_AUDIO_KEY = "context_audio"
"""``session.update`` key (and ``session.created`` extension name) of the negotiated extension
that marks the start of a session's audio as heard before (see :class:`ContextAudio`)."""

MAX_CONTEXT_AUDIO_SECONDS = 20.0
"""Longest ``context_audio``: more than a streaming window keeps of the past."""

MAX_CONTEXT_CHARS = 500
"""The most of a ``context`` that is kept: its end (an engine reads only the latest text)."""

MAX_PROMPT_CHARS = 500
"""Longest ``prompt`` accepted. Whisper reads at most 223 tokens of context; 500 characters
(about 110 tokens of English) leave room for the confirmed text it also needs."""


class ErrorCode(StrEnum):
    """Error codes sent in ``error`` events.

    The first seven are vLLM's, with the same meaning. The rest are this project's additions for
    conditions vLLM's server does not handle. ``invalid_frame`` and ``overloaded`` leave the
    session open (a bad frame is refused, a lagging engine is reported); the others are sent
    just before the socket closes.
    """

    INVALID_JSON = "invalid_json"
    UNKNOWN_EVENT = "unknown_event"
    INVALID_EVENT = "invalid_event"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_NOT_VALIDATED = "model_not_validated"
    INVALID_AUDIO = "invalid_audio"
    PROCESSING_ERROR = "processing_error"
    # Extensions
    INVALID_FRAME = "invalid_frame"
    """A binary WebSocket frame (the protocol is JSON text frames only)."""
    SERVER_BUSY = "server_busy"
    """The session limit is reached; try again later."""
    IDLE_TIMEOUT = "idle_timeout"
    """No event from the client within the idle timeout."""
    SESSION_TOO_LONG = "session_too_long"
    """The session exceeded the maximum session length."""
    AUDIO_BUFFER_FULL = "audio_buffer_full"
    """The client sends audio faster than the engine consumes it, beyond the bounded buffer."""
    OVERLOADED = "overloaded"
    """Warning: the engine is falling behind real time; captions lag."""
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    """A bridge could not reach (or lost) the engine behind it."""
    UNKNOWN_LANGUAGE = "unknown_language"
    """``language`` is not an ISO-639-1 code."""
    UNSUPPORTED_LANGUAGE = "unsupported_language"
    """The engine does not transcribe this language; the message lists those it does."""
    PROMPT_TOO_LONG = "prompt_too_long"
    """``prompt`` is longer than the server accepts."""
    PROMPT_NOT_SUPPORTED = "prompt_not_supported"
    """The engine cannot be steered by a prompt."""


OPTION_CODES = frozenset(
    {
        ErrorCode.UNKNOWN_LANGUAGE,
        ErrorCode.UNSUPPORTED_LANGUAGE,
        ErrorCode.PROMPT_TOO_LONG,
        ErrorCode.PROMPT_NOT_SUPPORTED,
    }
)
"""Codes of a refused ``session.update`` option: the session stays open, nothing changed."""


class ProtocolError(Exception):
    """A frame that cannot be accepted; ``code`` and ``message`` go into an ``error`` event."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message


# --------------------------------------------------------------------------- client -> server


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """What a client may ask of the transcription besides the model.

    ``language``: the ISO-639-1 code of the speech (None: the engine's default or its own
    detection). ``prompt``: names, terms and context that steer spelling (None: none).
    ``context``: what was said just before the session's audio (None: nothing known); unlike
    the prompt, it is never refused (an engine that cannot read it ignores it). Build it with
    :meth:`checked` to get the codec's validation outside a frame.
    """

    language: str | None = None
    prompt: str | None = None
    context: str | None = None
    context_audio: ContextAudio | None = None
    """Only for a server that announced the extension (see the module docstring)."""

    @classmethod
    def checked(
        cls,
        language: object = None,
        prompt: object = None,
        context: object = None,
        context_audio: object = None,
        *,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
    ) -> SessionOptions:
        """Validate and normalize; raise :class:`ProtocolError` with the option's code."""
        text = _check_context(context)
        return cls(
            language=_check_language(language),
            prompt=_check_prompt(prompt, max_prompt_chars),
            context=text,
            context_audio=_check_context_audio(context_audio, text),
        )

    def __bool__(self) -> bool:
        return self.language is not None or self.prompt is not None or self.context is not None


NO_OPTIONS = SessionOptions()


@dataclass(frozen=True, slots=True)
class ContextAudio:
    """The first ``seconds`` of a session's audio were transcribed before (by the stream this
    one continues); their words are among the last ``words`` words of the ``context``.

    A stream that starts at speech it has no audio before reads its first words worst, and a
    streaming decoder reads every word better the more of the speaker its window holds. With
    this, a new stream's window starts with the old one's last seconds, words already known.
    Counting a few words too many is harmless (the decoder reads them as said just before);
    counting too few makes the engine transcribe the missing ones again.
    """

    seconds: float
    words: int
    complete: bool = True
    """Every word said in the audio is among them; False: its last words may not have been
    transcribed yet (a stream lost before it said them), and the engine transcribes what
    follows the words given."""


@dataclass(frozen=True, slots=True)
class SessionUpdate:
    """Choose and validate the model (and the session options). No reply is sent on success."""

    model: str | None
    partials: bool = False
    language: str | None = None
    prompt: str | None = None
    context: str | None = None
    context_audio: ContextAudio | None = None
    type: str = field(default="session.update", init=False)

    @property
    def options(self) -> SessionOptions:
        return SessionOptions(
            language=self.language,
            prompt=self.prompt,
            context=self.context,
            context_audio=self.context_audio,
        )


@dataclass(frozen=True, slots=True)
class InputAudioBufferAppend:
    """Queue audio. ``audio`` holds the raw PCM16 bytes; base64 exists only on the wire."""

    audio: bytes
    type: str = field(default="input_audio_buffer.append", init=False)

    @property
    def samples(self) -> int:
        return len(self.audio) // BYTES_PER_SAMPLE


@dataclass(frozen=True, slots=True)
class InputAudioBufferCommit:
    """Non-final: start generation (ignored while one runs). Final: the audio is finished."""

    final: bool = False
    type: str = field(default="input_audio_buffer.commit", init=False)


ClientEvent = SessionUpdate | InputAudioBufferAppend | InputAudioBufferCommit

# --------------------------------------------------------------------------- server -> client


@dataclass(frozen=True, slots=True)
class SessionCreated:
    id: str = field(default_factory=lambda: f"sess-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    expires_at: int | None = None
    """Extension (named as in OpenAI's Realtime API): when the server will end this session
    (unix seconds), so that a client can hand over to a new one before; vLLM sends none."""
    extensions: tuple[str, ...] = ()
    """Negotiated extensions the server's engine reads (``context_audio``); vLLM sends none."""
    type: str = field(default="session.created", init=False)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TranscriptionDelta:
    """Confirmed text, append-only: the concatenation of all deltas is the transcript."""

    delta: str
    type: str = field(default="transcription.delta", init=False)


@dataclass(frozen=True, slots=True)
class TranscriptionPartial:
    """Extension: the whole current unconfirmed tail (replaces the previous partial)."""

    text: str
    type: str = field(default="transcription.partial", init=False)


@dataclass(frozen=True, slots=True)
class TranscriptionDone:
    text: str
    usage: Usage | None = None
    type: str = field(default="transcription.done", init=False)


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    error: str
    code: str | None = None
    type: str = field(default="error", init=False)


ServerEvent = (
    SessionCreated | TranscriptionDelta | TranscriptionPartial | TranscriptionDone | ErrorEvent
)
TranscriptEvent = TranscriptionDelta | TranscriptionPartial | TranscriptionDone
"""What an engine yields: text as it becomes known, then one ``done``."""

Event = ClientEvent | ServerEvent

# --------------------------------------------------------------------------- serialization


def serialize(event: Event) -> str:
    """Encode an event as one compact JSON text frame, keys in vLLM's order."""
    return json.dumps(to_dict(event), separators=(",", ":"), ensure_ascii=False)


def to_dict(event: Event) -> dict[str, Any]:
    match event:
        case SessionUpdate(model=model, partials=partials, language=language, prompt=prompt):
            out: dict[str, Any] = {"type": event.type, "model": model}
            if partials:
                out[PARTIALS_KEY] = True
            if language is not None:
                out["language"] = language
            if prompt is not None:
                out["prompt"] = prompt
            if event.context is not None:
                out[CONTEXT_KEY] = event.context
            if event.context_audio is not None:
                heard = event.context_audio
                out[CONTEXT_AUDIO_KEY] = {"seconds": heard.seconds, "words": heard.words}
                if not heard.complete:
                    out[CONTEXT_AUDIO_KEY]["complete"] = False
            return out
        case InputAudioBufferAppend(audio=audio):
            return {"type": event.type, "audio": base64.b64encode(audio).decode("ascii")}
        case InputAudioBufferCommit(final=final):
            return {"type": event.type, "final": final}
        case SessionCreated(id=sid, created=created, expires_at=expires_at):
            out = {"type": event.type, "id": sid, "created": created}
            if expires_at is not None:
                out["expires_at"] = expires_at
            if event.extensions:
                out["extensions"] = list(event.extensions)
            return out
        case TranscriptionDelta(delta=delta):
            return {"type": event.type, "delta": delta}
        case TranscriptionPartial(text=text):
            return {"type": event.type, "text": text}
        case TranscriptionDone(text=text, usage=usage):
            usage_dict = None
            if usage is not None:
                usage_dict = {
                    "prompt_tokens": usage.prompt_tokens,
                    "total_tokens": usage.total_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "prompt_tokens_details": None,
                    "completion_tokens_details": None,
                }
            return {"type": event.type, "text": text, "usage": usage_dict}
        case ErrorEvent(error=error, code=code):
            return {"type": event.type, "error": error, "code": code}
    raise TypeError(f"not a protocol event: {event!r}")


def error_frame(code: ErrorCode | str, message: str) -> str:
    """Shorthand for the JSON of an ``error`` event."""
    return serialize(ErrorEvent(error=message, code=str(code)))


# --------------------------------------------------------------------------- parsing


def _load_object(frame: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(frame)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(ErrorCode.INVALID_JSON, "Invalid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_JSON, "Invalid JSON: an event must be an object")
    return obj


def decode_audio(payload: object, *, max_bytes: int = DEFAULT_MAX_APPEND_BYTES) -> bytes:
    """Validate and decode the base64 PCM16 of an append, as strictly as vLLM does or more."""
    if not isinstance(payload, str):
        raise ProtocolError(ErrorCode.INVALID_AUDIO, "Invalid audio data: 'audio' must be a string")
    if len(payload) > (max_bytes * 4) // 3 + 4:
        raise ProtocolError(ErrorCode.INVALID_AUDIO, "Invalid audio data: chunk too large")
    try:
        audio = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(ErrorCode.INVALID_AUDIO, "Invalid audio data: not base64") from None
    if not audio:
        raise ProtocolError(ErrorCode.INVALID_AUDIO, "Invalid audio data: empty chunk")
    if len(audio) % BYTES_PER_SAMPLE:
        raise ProtocolError(
            ErrorCode.INVALID_AUDIO, "Invalid audio data: odd byte count (PCM16 expected)"
        )
    if len(audio) > max_bytes:
        raise ProtocolError(ErrorCode.INVALID_AUDIO, "Invalid audio data: chunk too large")
    return audio


def parse_client_event(
    frame: str | bytes,
    *,
    max_audio_bytes: int = DEFAULT_MAX_APPEND_BYTES,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
) -> ClientEvent:
    """Parse one client frame; raise :class:`ProtocolError` with vLLM's code when it is bad.

    A ``session.update`` without ``model`` raises ``invalid_event``; checking that the model
    exists is the server's business (it alone knows which models it serves).
    """
    obj = _load_object(frame)
    kind = obj.get("type")
    if kind == "input_audio_buffer.append":
        if "audio" not in obj:
            raise ProtocolError(ErrorCode.INVALID_AUDIO, "Invalid audio data: 'audio' is missing")
        return InputAudioBufferAppend(decode_audio(obj["audio"], max_bytes=max_audio_bytes))
    if kind == "input_audio_buffer.commit":
        final = obj.get("final", False)
        if not isinstance(final, bool):
            raise ProtocolError(ErrorCode.PROCESSING_ERROR, "'final' must be a boolean")
        return InputAudioBufferCommit(final=final)
    if kind == "session.update":
        model = obj.get("model")
        if model is None:
            raise ProtocolError(ErrorCode.INVALID_EVENT, "Missing required field: model")
        if not isinstance(model, str):
            raise ProtocolError(ErrorCode.INVALID_EVENT, "Field 'model' must be a string")
        options = SessionOptions.checked(
            obj.get("language"),
            obj.get("prompt"),
            obj.get(CONTEXT_KEY),
            obj.get(CONTEXT_AUDIO_KEY),
            max_prompt_chars=max_prompt_chars,
        )
        return SessionUpdate(
            model=model,
            partials=obj.get(PARTIALS_KEY) is True,
            language=options.language,
            prompt=options.prompt,
            context=options.context,
            context_audio=options.context_audio,
        )
    raise ProtocolError(ErrorCode.UNKNOWN_EVENT, f"Unknown event type: {kind}")


def parse_server_event(frame: str | bytes) -> ServerEvent:
    """Parse one server frame (for clients). Unknown server events raise ``unknown_event``."""
    obj = _load_object(frame)
    kind = obj.get("type")
    try:
        if kind == "transcription.delta":
            return TranscriptionDelta(delta=_str(obj["delta"]))
        if kind == "transcription.partial":
            return TranscriptionPartial(text=_str(obj["text"]))
        if kind == "transcription.done":
            usage = obj.get("usage")
            parsed_usage = None
            if isinstance(usage, dict):
                parsed_usage = Usage(
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0),
                )
            return TranscriptionDone(text=_str(obj.get("text", "")), usage=parsed_usage)
        if kind == "error":
            code = obj.get("code")
            return ErrorEvent(
                error=str(obj.get("error", "")), code=None if code is None else str(code)
            )
        if kind == "session.created":
            expires = obj.get("expires_at")
            return SessionCreated(
                id=_str(obj.get("id", "")),
                created=int(obj.get("created", 0)),
                expires_at=int(expires) if isinstance(expires, int | float) else None,
                extensions=_extensions(obj.get("extensions")),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.INVALID_EVENT, f"Malformed {kind} event: {exc}") from None
    raise ProtocolError(ErrorCode.UNKNOWN_EVENT, f"Unknown event type: {kind}")


def _check_language(value: object) -> str | None:
    """None or "" mean no choice; a code is matched case-insensitively (``"EN"`` is ``"en"``)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.INVALID_EVENT, "Field 'language' must be a string")
    code = value.strip().lower()
    if not code:
        return None
    if code not in ISO_639_1:
        shown = value if len(value) <= 20 else value[:20] + "…"
        raise ProtocolError(
            ErrorCode.UNKNOWN_LANGUAGE,
            f"Unknown language {shown!r}: give a two-letter ISO-639-1 code such as 'en' or 'de'",
        )
    return code


def _check_prompt(value: object, max_chars: int) -> str | None:
    """None or blank mean no prompt; whitespace runs collapse (they carry no meaning)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.INVALID_EVENT, "Field 'prompt' must be a string")
    text = " ".join(value.split())
    if not text:
        return None
    if max_chars <= 0:
        raise ProtocolError(
            ErrorCode.PROMPT_NOT_SUPPORTED,
            "This server takes no prompt: send the session without one",
        )
    if len(text) > max_chars:
        raise ProtocolError(
            ErrorCode.PROMPT_TOO_LONG,
            f"The prompt has {len(text)} characters; at most {max_chars} are accepted: "
            "keep the names and terms that matter most",
        )
    return text


def _check_context(value: object) -> str | None:
    """None or blank mean none; a long context keeps its end, from a word on (the text just
    before the audio is what matters, and an engine reads only its latest words)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(ErrorCode.INVALID_EVENT, "Field 'context' must be a string")
    return context_tail(value)


def _check_context_audio(value: object, context: str | None) -> ContextAudio | None:
    """None, or seconds in (0, ``MAX_CONTEXT_AUDIO_SECONDS``] and 1 to all of the context's
    words: the words must be there, or the engine would transcribe the audio again."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.INVALID_EVENT, "Field 'context_audio' must be an object")
    seconds, words = value.get("seconds"), value.get("words")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ProtocolError(ErrorCode.INVALID_EVENT, "'context_audio.seconds' must be a number")
    if not 0 < seconds <= MAX_CONTEXT_AUDIO_SECONDS:
        raise ProtocolError(
            ErrorCode.INVALID_EVENT,
            f"'context_audio.seconds' must be above 0 and at most {MAX_CONTEXT_AUDIO_SECONDS:g}",
        )
    available = len(context.split()) if context else 0
    if isinstance(words, bool) or not isinstance(words, int) or not 0 < words <= available:
        raise ProtocolError(
            ErrorCode.INVALID_EVENT,
            "'context_audio.words' must count 1 to all of the words of 'context' "
            f"({available} here)",
        )
    complete = value.get("complete", True)
    if not isinstance(complete, bool):
        raise ProtocolError(ErrorCode.INVALID_EVENT, "'context_audio.complete' must be a boolean")
    return ContextAudio(seconds=float(seconds), words=words, complete=complete)


def _extensions(value: object) -> tuple[str, ...]:
    """A ``session.created``'s extension names (anything else there is ignored)."""
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def context_tail(text: str) -> str | None:
    """The end of ``text`` that a ``context`` keeps: whitespace runs collapsed, at most
    ``MAX_CONTEXT_CHARS``, from a word on; None when nothing is left."""
    text = " ".join(text.split())
    if len(text) > MAX_CONTEXT_CHARS:
        text = text[-MAX_CONTEXT_CHARS:]
        if " " in text:
            text = text.split(" ", 1)[1]
    return text or None


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value
