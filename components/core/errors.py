"""Errors a person can act on: each says what went wrong and what to do about it.

Backends raise these; the page and the CLI show ``str(error)`` verbatim, never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping

from components.core.protocol import OPTION_CODES, ErrorCode


class BackendError(Exception):
    """Base class: a failure to open or keep a transcription stream."""

    retryable: bool = False


class BackendUnavailable(BackendError):
    """The backend cannot be reached (refused, DNS, TLS, timeout)."""

    retryable = True


class AuthError(BackendError):
    """Credentials are missing, wrong, or not allowed to do this."""


class NotFound(BackendError):
    """The endpoint, route or model does not exist (or is not allowed here)."""


class Busy(BackendError):
    """The backend is at capacity; trying again later may work."""

    retryable = True


class ConnectionLost(BackendError):
    """An open stream ended without the final transcript."""

    retryable = True


class InvalidOption(BackendError):
    """The backend refused a session option (the language or the prompt); the message says
    what it accepts."""


class RemoteError(BackendError):
    """The remote side reported a failure of its own (a model error, a container close)."""


class StreamExpired(ConnectionLost):
    """The stream reached its backend's maximum duration (SageMaker's 30 minutes, a server's
    session length): a new stream continues the session."""


def error_class(code: str) -> type[BackendError] | None:
    """The exception a Realtime ``error`` event with ``code`` ends a stream with, or None for
    an event after which the stream goes on (a warning, a refused event)."""
    if code == ErrorCode.MODEL_NOT_FOUND:
        return NotFound
    if code == ErrorCode.SERVER_BUSY:
        return Busy
    if code == ErrorCode.UPSTREAM_UNAVAILABLE:
        return BackendUnavailable
    if code == ErrorCode.SESSION_TOO_LONG:
        return StreamExpired
    if code in OPTION_CODES:
        return InvalidOption
    if code in (ErrorCode.IDLE_TIMEOUT, ErrorCode.AUDIO_BUFFER_FULL):
        return ConnectionLost
    if code in (ErrorCode.PROCESSING_ERROR, ErrorCode.MODEL_NOT_VALIDATED):
        return RemoteError
    return None


def event_error(
    code: str, message: str, wording: Mapping[type[BackendError], str], default: str
) -> BackendError | None:
    """The exception for an ``error`` event (see :func:`error_class`), worded by the backend:
    ``wording[kind]`` (else ``default``) says it in the terms of the far end the user knows,
    with ``{message}`` standing for the event's own message."""
    kind = error_class(code)
    if kind is None:
        return None
    return kind(wording.get(kind, default).replace("{message}", message))
