"""What the bridge decides about each frame and close, without I/O: which binary frames are
JSON text, which options a session may not ask for, which close codes a client may see, and
which route a stream takes."""

from __future__ import annotations

from collections.abc import Mapping

from components.core.languages import VOXTRAL_REALTIME_LANGUAGES, option_refusal
from components.core.protocol import (
    ErrorCode,
    ProtocolError,
    SessionUpdate,
    error_frame,
    parse_client_event,
)

STREAM_PATH = "/invocations-bidirectional-stream"
"""SageMaker's default path for bidirectional streams."""

STREAM_PATHS = (STREAM_PATH, "/v1/realtime")
"""WebSocket routes the bridge serves; ``/v1/realtime`` lets a plain vLLM client connect too."""

INVOCATION_PATH_HEADER = "x-amzn-sagemaker-model-invocation-path"
"""SageMaker header naming the route a call wants (``ModelInvocationPath``)."""

MAX_REASON_BYTES = 123
"""A WebSocket close reason must fit in a control frame (125 bytes minus the code)."""


def binary_as_text(data: bytes) -> str | None:
    """The text of a binary frame that holds UTF-8 JSON, else ``None``.

    A cheap structural test (valid UTF-8, an object's braces at both ends) rather than a parse:
    the engine parses every event anyway and answers ``invalid_json`` for a broken one.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    stripped = text.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        return text
    return None


def text_size(text: str) -> int:
    """UTF-8 size of ``text``; O(1) for ASCII (all protocol events but some deltas)."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def session_update_refusal(text: str) -> str | None:
    """The error frame for a ``session.update`` whose options Voxtral Realtime on ``vllm
    serve`` cannot honour; None to forward the frame (anything else is vLLM's to judge)."""
    try:
        event = parse_client_event(text)
    except ProtocolError as exc:
        if exc.code in (ErrorCode.UNKNOWN_LANGUAGE, ErrorCode.PROMPT_TOO_LONG):
            return error_frame(exc.code, exc.message)
        if exc.code == ErrorCode.INVALID_EVENT and (
            "'language'" in exc.message or "'prompt'" in exc.message
        ):
            return error_frame(exc.code, exc.message)
        return None
    if not isinstance(event, SessionUpdate):
        return None
    refusal = option_refusal(
        event.language,
        event.prompt,
        languages=VOXTRAL_REALTIME_LANGUAGES,
        takes_prompt=False,
        label="Voxtral Realtime on vllm serve",
    )
    return None if refusal is None else error_frame(*refusal)


def truncate_reason(reason: str) -> str:
    """Fit a close reason into a control frame without splitting a UTF-8 sequence."""
    raw = reason.encode("utf-8")
    if len(raw) <= MAX_REASON_BYTES:
        return reason
    return raw[:MAX_REASON_BYTES].decode("utf-8", errors="ignore")


def is_sendable_close_code(code: int | None) -> bool:
    """Codes an endpoint may put in a close frame (RFC 6455 §7.4; 1005/1006/1015 are not)."""
    if code is None:
        return False
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )


def client_close_for(code: int | None, reason: str) -> tuple[int, str]:
    """The close to give the client when the upstream closed with ``code``/``reason``."""
    if code == 1005:  # a close frame without a code: a normal end
        return 1000, reason
    if is_sendable_close_code(code):
        assert code is not None
        return code, truncate_reason(reason)
    return 1011, truncate_reason(reason or f"engine closed abnormally ({code})")


def upstream_close_for(code: int | None) -> int:
    """The close to give the upstream when the client closed with ``code``."""
    return code if is_sendable_close_code(code) and code is not None else 1001


def resolve_route(path: str, headers: Mapping[str, str]) -> str | None:
    """The stream route a connection asks for, or ``None`` when the bridge does not serve it.

    SageMaker connects to ``ModelInvocationPath`` (default ``/invocations-bidirectional-stream``);
    when the invocation-path header is present it names the route the caller wanted.
    """
    wanted = headers.get(INVOCATION_PATH_HEADER, "").strip() or path
    if not wanted.startswith("/"):
        wanted = "/" + wanted
    wanted = wanted.split("?", 1)[0].rstrip("/") or "/"
    return wanted if wanted in STREAM_PATHS else None
